#!/usr/bin/env bash
# A tour of moshca on one machine: a local OpenID Connect identity provider (tests/idp,
# Node.js 20+), a CA that signs people in through it, a private sshd that trusts the CA, a
# private ssh-agent; alice signs in with a code (the device grant), asks for access to role
# db-oncall, bob signs in through the browser flow and approves, alice logs in over ssh
# with the short-lived certificate. The identity provider's groups decide who may do what. Everything lives in a temporary directory that is
# removed (and every process stopped) on exit. Exits non-zero if any step fails.
#
# Run as root to get a dedicated demo account (moshca-demo); otherwise the certificate is
# issued for $USER and the private sshd runs as $USER.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

step=""
say() { step="$*"; printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "demo: need root (or sudo) to run: $*" >&2
        return 1
    fi
}
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
sshd_bin() { command -v sshd 2>/dev/null || echo /usr/sbin/sshd; }

# --- cleanup -----------------------------------------------------------------------------
work=""
pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo >&2
        echo "demo: FAILED during: ${step:-setup}" >&2
        if [ -n "$work" ]; then
            for log in server.log idp.log sshd.log signin.err login.err login.out; do
                if [ -s "$work/$log" ]; then
                    echo "--- $log ---" >&2
                    tail -n 30 "$work/$log" >&2
                fi
            done
        fi
    fi
    if [ -n "$work" ]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits up to $1 seconds for the command that follows to succeed.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.1
    done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }

# --- prerequisites -----------------------------------------------------------------------
say "checking for OpenSSH"
missing=()
have sshd || missing+=(openssh-server)
{ have ssh && have ssh-agent && have ssh-keygen && have ssh-add; } || missing+=(openssh-client)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

say "checking for Node.js 20+ and the test identity provider's packages"
if ! have node || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "demo: the local identity provider needs Node.js 20 or later (node is $(node --version 2>/dev/null || echo missing))" >&2
    exit 1
fi
if [ ! -d "$repo/tests/idp/node_modules" ]; then
    (cd "$repo/tests/idp" && npm ci --no-audit --no-fund)
fi
idp_dir="$repo/tests/idp"

say "building moshca-server and moshca (cargo build --bins)"
. "$repo/scripts/built.sh"
built_bins
server() { "$MOSHCA_SERVER_BIN" "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/moshca-demo.XXXXXX")
data="$work/ca"
mkdir -p "$work/home"

# --- the demo account ---------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    login=moshca-demo
    say "creating the local account $login (the principal the certificate will name)"
    useradd -m -s /bin/sh "$login" 2>/dev/null || [ $? -eq 9 ] # 9: it exists already
    # With UsePAM no, sshd refuses a locked account even with a valid certificate.
    usermod -p '*' "$login"
    mkdir -p /run/sshd
else
    login=${USER:-$(id -un)}
    say "not root: the certificate will name your own account, $login"
fi

# --- the CA -----------------------------------------------------------------------------
say "initialising a CA in $data"
server init --data-dir "$data" >/dev/null
cat >"$data/policy.toml" <<POLICY
[defaults]
max_ttl = "8h"

[[role]]
name = "db-oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
reason_min_len = 10
logins = ["$login"]
default_ttl = "30m"
max_ttl = "1h"
POLICY
echo "policy: role db-oncall, requested by group oncall, approved by group sre-leads, login $login"

say "starting the identity provider: alice is in group oncall, bob in sre-leads"
cat >"$work/accounts.json" <<'ACCOUNTS'
{"alice": {"password": "alice-demo-pw", "groups": ["oncall"]},
 "bob": {"password": "bob-demo-pw", "groups": ["sre-leads"]}}
ACCOUNTS
node "$idp_dir/server.mjs" --port 0 --accounts "$work/accounts.json" >"$work/idp.out" 2>"$work/idp.log" &
pids+=($!)
idp_pid=$!
idp_ready() { grep -q '^ready http://' "$work/idp.out" || ! alive "$idp_pid"; }
wait_until 30 idp_ready
issuer=$(sed -n 's/^ready \(http:\/\/[^ ]*\)$/\1/p' "$work/idp.out" | head -n 1)
[ -n "$issuer" ]
echo "identity provider at $issuer"
cat >>"$data/config.toml" <<SSO

[sso]
issuer = "$issuer"
client_id = "moshca"
SSO
echo "CA config.toml: [sso] issuer = \"$issuer\", client_id = \"moshca\" (no user is added by hand)"

say "starting moshca-server on a free loopback port"
# Background jobs run the binaries directly (not through a shell function), so that the pid
# the cleanup kills is the process itself.
"$MOSHCA_SERVER_BIN" serve --data-dir "$data" --listen 127.0.0.1:0 >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
server_pid=$!
listening() { grep -q '^moshca-server listening on https://' "$work/server.out" || ! alive "$server_pid"; }
wait_until 30 listening
url=$(sed -n 's/^moshca-server listening on \(https:\/\/[^ ]*\).*/\1/p' "$work/server.out" | head -n 1)
[ -n "$url" ]
echo "CA listening on $url"

# Every moshca call below talks to this CA only, with a throwaway HOME.
export MOSHCA_SERVER="$url" MOSHCA_CA_CERT="$data/tls/cert.pem"
unset MOSHCA_TOKEN_FILE
unset MOSHCA_TOKEN
# Each person has their own config directory, where `moshca auth login` keeps the session.
# Their "browser" is tests/idp/browser.mjs, which fills in the provider's pages for them.
as() {
    local user=$1 password
    shift
    case "$user" in
        alice) password=alice-demo-pw ;;
        bob) password=bob-demo-pw ;;
    esac
    HOME="$work/home" XDG_CONFIG_HOME="$work/$user-config" BROWSER="$idp_dir/browser.mjs" \
        MOSHCA_IDP_USER="$user" MOSHCA_IDP_PASSWORD="$password" "$MOSHCA_CLIENT_BIN" "$@"
}


# --- a host that trusts the CA ------------------------------------------------------------
say "starting a private sshd that trusts the CA (TrustedUserCAKeys $data/ca_key.pub)"
ssh-keygen -q -t ed25519 -N '' -C moshca-demo-host -f "$work/host_ed25519"
: >"$work/revoked_keys" # RevokedKeys must exist: a missing file refuses every key
sshd_pid=""
port=""
for _ in 1 2 3 4 5 6 7 8; do
    candidate=$((20000 + RANDOM % 40000))
    if port_open "$candidate"; then
        continue
    fi
    cat >"$work/sshd_config" <<SSHD
Port $candidate
ListenAddress 127.0.0.1
HostKey $work/host_ed25519
PidFile none
UsePAM no
StrictModes no
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
TrustedUserCAKeys $data/ca_key.pub
RevokedKeys $work/revoked_keys
LogLevel VERBOSE
SSHD
    "$(sshd_bin)" -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
    sshd_pid=$!
    pids+=("$sshd_pid")
    sshd_up() { port_open "$candidate" || ! alive "$sshd_pid"; }
    wait_until 10 sshd_up || true
    if alive "$sshd_pid" && port_open "$candidate"; then
        port=$candidate
        break
    fi
done
[ -n "$port" ]
echo "sshd listening on 127.0.0.1:$port"

say "starting a private ssh-agent"
export SSH_AUTH_SOCK="$work/agent.sock"
ssh-agent -D -a "$SSH_AUTH_SOCK" >/dev/null &
pids+=($!)
wait_until 10 test -S "$SSH_AUTH_SOCK"

# --- signing in --------------------------------------------------------------------------
say "alice: moshca auth login --device (she enters the code on her phone: device.mjs)"
as alice auth login --device >"$work/signin.out" 2>"$work/signin.err" &
signin_pid=$!
pids+=("$signin_pid")
code_shown() { grep -qs '^moshca: to sign in, open ' "$work/signin.err" || ! alive "$signin_pid"; }
wait_until 30 code_shown
sed 's/^/    /' "$work/signin.err"
verification=$(sed -n 's/^moshca: to sign in, open \(.*\)$/\1/p' "$work/signin.err" | head -n 1)
[ -n "$verification" ]
node "$idp_dir/device.mjs" --user alice --password alice-demo-pw --uri "$verification"
wait "$signin_pid"
sed 's/^/    /' "$work/signin.out"

say "bob: moshca auth login (the browser flow with PKCE; his browser is browser.mjs)"
as bob auth login 2>&1 | grep -v '^browser.mjs' | sed 's/^/    /'

say "alice: moshca auth status"
as alice auth status

say "the CA's users and sessions (moshca-server user list; session list)"
server user list --data-dir "$data"
server session list --data-dir "$data"

# --- the access request ----------------------------------------------------------------
say "alice: moshca login --role db-oncall --reason \"INC-4312 replica lag\""
as alice login --role db-oncall --reason "INC-4312 replica lag" --timeout 2m \
    >"$work/login.out" 2>"$work/login.err" &
login_pid=$!
pids+=("$login_pid")
announced() { grep -qs '^moshca: request .* is waiting' "$work/login.err" || ! alive "$login_pid"; }
wait_until 30 announced
sed 's/^/    /' "$work/login.err"
id=$(sed -n 's/^moshca: request \([^ ]*\) is waiting.*/\1/p' "$work/login.err" | head -n 1)
[ -n "$id" ]

say "bob: moshca requests --pending"
as bob requests --pending

say "bob: moshca approve $id"
as bob approve "$id" --comment "go ahead"

say "alice's login receives the certificate"
wait "$login_pid"
sed 's/^/    /' "$work/login.out"

say "ssh $login@127.0.0.1 id (with nothing but the agent's certificate)"
ssh -F /dev/null -o IdentityAgent="$SSH_AUTH_SOCK" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -p "$port" "$login@127.0.0.1" id

say "sshd's log links the login to the request"
grep -m 1 'Accepted certificate ID' "$work/sshd.log" | sed 's/^/    /'

say "the certificate in the agent (ssh-add -L | ssh-keygen -L -f -)"
ssh-add -L | grep -- '-cert-v01@openssh.com ' | ssh-keygen -L -f -

say "alice: moshca auth logout"
as alice auth logout

step=""
printf '\ndemo finished: alice and bob signed in through %s; request %s approved by bob, certificate valid for %s only.\n' "$issuer" "$id" "$login"
