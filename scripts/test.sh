#!/usr/bin/env bash
# The test command of README.md: every unit, in-process and end-to-end test.
#
# The end-to-end tests (tests/, package moshca-e2e) drive the real binaries against a real
# OpenSSH sshd and ssh-agent, as root. This script installs OpenSSH and jq when missing,
# builds the binaries the tests run, then runs `cargo test --workspace` with any extra
# arguments passed through (e.g. `scripts/test.sh -p moshca-e2e -- --nocapture`).
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "test.sh: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

missing=()
have sshd || missing+=(openssh-server)
{ have ssh && have ssh-agent && have ssh-keygen && have ssh-add; } || missing+=(openssh-client)
# What scripts read moshca's --json output with; a test checks 64-bit numbers survive it.
have jq || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --workspace --bins
# The scripts' own contract (binaries wherever cargo puts them); it runs cargo, which
# cannot happen inside `cargo test`.
tests/scripts/built_bins.sh

# The end-to-end tests mostly wait on processes (two of them on a certificate's expiry,
# about 70 s), so run more of them at once than there are cores.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
cargo test --workspace "$@"
