#!/usr/bin/env bash
# finding 12: the repository's scripts find moshca's binaries wherever cargo put them, not
# only in ./target/debug (CARGO_TARGET_DIR, build.target-dir in a cargo config).
#
# The attack is a target directory under another name. A second path to the real one (a
# symbolic link) stands in for it, so nothing is built twice: `built_bins` must report
# binaries under that name, and demo.sh must take its binaries from `built_bins` alone.
# Run by scripts/test.sh before `cargo test` (which holds the target directory's lock).
set -euo pipefail

cd "$(dirname "$0")/../.."
fail() { echo "built_bins.sh: FAILED: $*" >&2; exit 1; }

target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -d "$target" ] || fail "cargo metadata named no target directory"
elsewhere=$(mktemp -d "${TMPDIR:-/tmp}/moshca-target.XXXXXX")
trap 'rm -rf "$elsewhere"' EXIT
ln -s "$target" "$elsewhere/target"

# shellcheck source=scripts/built.sh
. scripts/built.sh
CARGO_TARGET_DIR="$elsewhere/target" built_bins || fail "built_bins failed"
for bin in "$MOSHCA_SERVER_BIN" "$MOSHCA_CLIENT_BIN"; do
    case "$bin" in
        "$elsewhere/target/"*) ;;
        *) fail "$bin is not under CARGO_TARGET_DIR=$elsewhere/target" ;;
    esac
    "$bin" --version >/dev/null || fail "$bin --version failed"
done
grep -q 'built_bins' scripts/demo.sh || fail "demo.sh does not take its binaries from built_bins"
if grep -q 'target/debug' scripts/demo.sh; then
    fail "demo.sh names a fixed target directory"
fi
echo "built_bins.sh: ok: the scripts use the binaries under CARGO_TARGET_DIR"
