#!/usr/bin/env bash
# A tour of moshca on one machine: a CA, a private sshd that trusts it, a private
# ssh-agent; alice asks for access to role db-oncall, bob approves, alice logs in over ssh
# with the short-lived certificate. Everything lives in a temporary directory that is
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
            for log in server.log sshd.log login.err login.out; do
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

say "adding users alice (oncall) and bob (sre-leads)"
alice_token=$(server user add alice --group oncall --data-dir "$data")
bob_token=$(server user add bob --group sre-leads --data-dir "$data")
server user list --data-dir "$data"

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
as() {
    local user=$1 token
    shift
    case "$user" in
        alice) token=$alice_token ;;
        bob) token=$bob_token ;;
    esac
    HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" MOSHCA_TOKEN="$token" "$MOSHCA_CLIENT_BIN" "$@"
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

# --- the access request ----------------------------------------------------------------
say "alice: moshca login --role db-oncall --reason \"INC-4312 replica lag\""
HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" MOSHCA_TOKEN="$alice_token" \
    "$MOSHCA_CLIENT_BIN" login --role db-oncall --reason "INC-4312 replica lag" --timeout 2m \
    >"$work/login.out" 2>"$work/login.err" &
login_pid=$!
pids+=("$login_pid")
announced() { grep -q '^moshca: request .* is waiting' "$work/login.err" || ! alive "$login_pid"; }
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

step=""
printf '\ndemo finished: request %s approved by bob, certificate valid for %s only.\n' "$id" "$login"
