#!/usr/bin/env bash
# The test command of README.md: every unit, in-process and end-to-end test.
#
# The end-to-end tests (tests/, package moshca-e2e) drive the real binaries against a real
# OpenSSH sshd and ssh-agent, as root. This script installs OpenSSH and jq when missing,
# builds the binaries the tests run, then runs `cargo test --workspace` with any extra
# arguments passed through (e.g. `scripts/test.sh -p moshca-e2e -- --nocapture`).
#
# Then the interop matrix's second version: scripts/openssh-10.sh builds OpenSSH 10.0 (once,
# cached under the target directory) and the OpenSSH-facing tests run again against it
# (docs/openssh-versions.md). MOSHCA_SKIP_OPENSSH_10=1 skips that pass outside CI; in CI
# (CI set) a 10.0 that cannot be built is a failure, never a skip.
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
# The PostgreSQL storage tests start their own server (tests/postgres) from Debian's packages.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The SSO end-to-end tests (tests/tests/sso.rs) sign in at a local OpenID Connect provider,
# tests/idp/server.mjs, which needs Node.js 20 or later and its npm packages.
if ! command -v node >/dev/null 2>&1; then
    echo "test.sh: node is missing; the SSO tests need Node.js 20 or later (e.g. from nodejs.org or nvm)" >&2
    exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "test.sh: node $(node --version) is too old; the SSO tests need Node.js 20 or later" >&2
    exit 1
fi
if [ ! -d tests/idp/node_modules ]; then
    echo "test.sh: installing the test identity provider's packages (npm ci in tests/idp)" >&2
    (cd tests/idp && npm ci --no-audit --no-fund)
fi

cargo build --workspace --bins
# The scripts' own contract (binaries wherever cargo puts them); it runs cargo, which
# cannot happen inside `cargo test`.
tests/scripts/built_bins.sh

# The end-to-end tests mostly wait on processes (two of them on a certificate's expiry,
# about 70 s), so run more of them at once than there are cores.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
echo "--- tests against the system's OpenSSH: $(ssh -V 2>&1)" >&2
cargo test --workspace "$@"

in_ci() { [ -n "${CI:-}" ] && [ "${CI}" != 0 ] && [ "${CI}" != false ]; }

if [ "${MOSHCA_SKIP_OPENSSH_10:-}" = 1 ]; then
    if in_ci; then
        echo "test.sh: MOSHCA_SKIP_OPENSSH_10=1 is not allowed in CI" >&2
        exit 1
    fi
    echo "test.sh: skipping the OpenSSH 10.0 pass (MOSHCA_SKIP_OPENSSH_10=1)" >&2
    exit 0
fi

started=$(date +%s)
if ! openssh_10=$(scripts/openssh-10.sh | tail -n 1) || [ -z "$openssh_10" ]; then
    if in_ci; then
        echo "test.sh: OpenSSH 10.0 could not be built; in CI that fails the run" >&2
        exit 1
    fi
    echo "test.sh: OpenSSH 10.0 could not be built; its pass is skipped (a failure in CI)" >&2
    exit 0
fi
built=$(date +%s)
echo "--- tests against OpenSSH 10.0: $("$openssh_10/bin/ssh" -V 2>&1) ($openssh_10)" >&2
# The KRL encoder against ssh-keygen, then every end-to-end test binary that runs an OpenSSH
# program: login (e2e), revocation, rotation and the host kit (hosts), KRL delivery
# (krl_delivery), CI certificates (ci), break-glass logins (audit), the agent and
# ssh-keygen as tools (hygiene, scripting), host certificates with ssh (host_certs) and the
# pinned differences (openssh). The rest
# do not depend on the OpenSSH version. `--workspace` keeps the features of the first pass,
# so its test binaries run again without a rebuild.
export MOSHCA_E2E_OPENSSH_DIR="$openssh_10"
cargo test --no-fail-fast --workspace --lib krl::tests::ssh_keygen
cargo test --no-fail-fast --workspace --test openssh --test e2e --test hosts \
    --test krl_delivery --test ci --test audit --test hygiene --test scripting --test host_certs
echo "test.sh: the OpenSSH 10.0 pass took $(($(date +%s) - started)) s (fetch and build $((built - started)) s)" >&2
