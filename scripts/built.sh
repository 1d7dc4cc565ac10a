# Sourced by the scripts: `built_bins` builds moshca's binaries and sets MOSHCA_SERVER_BIN
# and MOSHCA_CLIENT_BIN to where cargo put them. Cargo reports each executable's path
# itself, so CARGO_TARGET_DIR, `build.target-dir` in a cargo config and
# CARGO_BUILD_TARGET all work, not only ./target/debug.

built_bins() {
    local out
    out=$(cargo build --bins --quiet --message-format=json-render-diagnostics) || return 1
    MOSHCA_SERVER_BIN=$(printf '%s\n' "$out" | sed -n 's/.*"executable":"\([^"]*\/moshca-server\)".*/\1/p' | tail -n 1)
    MOSHCA_CLIENT_BIN=$(printf '%s\n' "$out" | sed -n 's/.*"executable":"\([^"]*\/moshca\)".*/\1/p' | tail -n 1)
    if [ ! -x "$MOSHCA_SERVER_BIN" ] || [ ! -x "$MOSHCA_CLIENT_BIN" ]; then
        echo "cargo built no moshca-server and moshca executables (got '$MOSHCA_SERVER_BIN', '$MOSHCA_CLIENT_BIN')" >&2
        return 1
    fi
    export MOSHCA_SERVER_BIN MOSHCA_CLIENT_BIN
}
