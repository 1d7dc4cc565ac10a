#!/usr/bin/env bash
# Make this host trust moshca certificates. Run as root on each SSH host.
#
#   deploy/host-setup.sh --server https://ca.example.net:7443 --ca-cert ca-tls.pem \
#       [--binary ./moshca] [--principal postgres=postgres@db-prod]...
#
# Steps, in an order that never locks anyone out:
#   1. check the moshca binary (/usr/local/bin/moshca, or install the one given by --binary);
#   2. write /etc/moshca/host.env (MOSHCA_SERVER, MOSHCA_CA_CERT) and copy the CA server's TLS
#      certificate to /etc/moshca/ca-tls.pem;
#   3. create /etc/ssh/auth_principals (and the lines given with --principal);
#   4. run `moshca host sync --dir /etc/ssh` once, so moshca_ca.pub and moshca.krl exist
#      BEFORE sshd is told about them (a missing RevokedKeys file refuses every key);
#   5. install the sshd drop-in /etc/ssh/sshd_config.d/moshca.conf and validate with
#      `sshd -t` (the drop-in is removed again if sshd rejects the configuration);
#   6. reload sshd, install the systemd units and enable moshca-host-sync.timer.
#
# --root DIR writes every file under DIR but with the real paths (/etc/ssh/..., /etc/moshca/...)
# inside them, so the tree can be copied into an image (or inspected) as it is; it implies
# --no-systemd. --no-systemd skips every systemctl call (sshd reload, timer); the unit files
# are still written. Re-running is safe: every file is rewritten with the same content.

set -euo pipefail

prog=host-setup
say() { printf '%s: %s\n' "$prog" "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$prog" "$1" >&2
	[[ $# -gt 1 ]] && printf '%s: hint: %s\n' "$prog" "$2" >&2
	exit 1
}

usage() {
	cat <<'USAGE'
Usage: host-setup.sh --server URL --ca-cert FILE [options]

  --server URL           moshca CA server, e.g. https://ca.example.net:7443
  --ca-cert FILE         PEM file with the CA server's TLS certificate (its tls/cert.pem)
  --binary FILE          install this moshca binary as /usr/local/bin/moshca first
  --principal ACCT=P     let certificate principal P log in as local account ACCT
                         (adds P to /etc/ssh/auth_principals/ACCT); repeatable
  --sshd-config FILE     sshd configuration to validate (default: /etc/ssh/sshd_config)
  --root DIR             write every file under DIR instead of / (the files name the real
                         paths, for an image); implies --no-systemd
  --textfile FILE        have the timer write a node_exporter textfile there, e.g.
                         /var/lib/node_exporter/textfile_collector/moshca.prom
  --no-systemd           do not call systemctl (no sshd reload, no timer)
  -h, --help             show this help
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server='' ca_cert='' binary='' sshd_config='' root=/ no_systemd=0 textfile=''
principals=()

while [[ $# -gt 0 ]]; do
	case $1 in
	--server) server=${2:?--server needs a URL}; shift 2 ;;
	--ca-cert) ca_cert=${2:?--ca-cert needs a file}; shift 2 ;;
	--binary) binary=${2:?--binary needs a file}; shift 2 ;;
	--principal) principals+=("${2:?--principal needs ACCOUNT=PRINCIPAL}"); shift 2 ;;
	--sshd-config) sshd_config=${2:?--sshd-config needs a file}; shift 2 ;;
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--no-systemd) no_systemd=1; shift ;;
	--textfile) textfile=${2:?--textfile needs a file}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" "see the usage above" ;;
	esac
done

[[ -n $server ]] || die "--server is required" "e.g. --server https://ca.example.net:7443"
[[ -n $ca_cert ]] || die "--ca-cert is required" "pass the CA server's tls/cert.pem"
url_re='^https://[][A-Za-z0-9.:-]+/?$' # host or [v6], optional :port
[[ $server =~ $url_re ]] ||
	die "--server must look like https://HOST:PORT, got: $server"
[[ -r $ca_cert ]] || die "cannot read --ca-cert $ca_cert"
[[ -z $textfile || ($textfile == /* && $textfile =~ ^[A-Za-z0-9._/-]+$) ]] ||
	die "--textfile must be an absolute path of letters, digits and . _ / -, got: $textfile"
grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_cert" ||
	die "$ca_cert holds no PEM certificate" "use the CA server's DATA_DIR/tls/cert.pem"

# The prefix: empty for /, else an absolute path of plain characters (it goes into sed
# replacements and systemd unit files).
[[ $root == /* ]] || die "--root must be an absolute path, got: $root"
[[ $root =~ ^[A-Za-z0-9._/-]+$ ]] || die "--root may only contain letters, digits and . _ / -"
p=${root%/}
if [[ -n $p ]]; then
	no_systemd=1
elif [[ $(id -u) -ne 0 ]]; then
	die "run as root: this writes /etc/ssh and /etc/moshca" "or try it out with --root /tmp/moshca-host"
fi
mkdir -p "$p/"

# Where files are written ($p/...) and the paths written into them (the real ones, which
# the tree has once it is the root of a host or an image).
ssh_dir=$p/etc/ssh
etc_dir=$p/etc/moshca
bin=$p/usr/local/bin/moshca
unit_dir=$p/etc/systemd/system
real_ssh_dir=/etc/ssh
real_etc_dir=/etc/moshca
sshd_config=${sshd_config:-$ssh_dir/sshd_config}

# Writes stdin to $1 with mode $2 through a temp file and rename, so readers never see
# half a file.
write_file() {
	local tmp
	tmp=$(mktemp "$(dirname "$1")/.$(basename "$1").XXXXXX")
	if ! cat >"$tmp" || ! chmod "$2" "$tmp" || ! mv -f "$tmp" "$1"; then
		rm -f "$tmp"
		die "cannot write $1"
	fi
}

# 1. The binary.
if [[ -n $binary ]]; then
	[[ -x $binary ]] || die "--binary $binary is not an executable file"
	install -D -m 0755 "$binary" "$bin.new" || die "cannot copy $binary to $bin.new"
	mv -f "$bin.new" "$bin" || die "cannot move $bin.new to $bin"
	say "installed $binary as $bin"
fi
[[ -x $bin ]] || die "$bin not found or not executable" \
	"copy the moshca binary there, or pass --binary FILE"
version=$("$bin" --version 2>&1) || die "$bin does not run: $version"
say "using $bin ($version)"

# 2. Settings for moshca-host-sync.service. Nothing secret: hosts need no token.
install -d -m 0755 "$etc_dir"
if [[ $(realpath "$ca_cert") != $(realpath -m "$etc_dir/ca-tls.pem") ]]; then
	write_file "$etc_dir/ca-tls.pem" 0644 <"$ca_cert"
fi
write_file "$etc_dir/host.env" 0644 <<EOF
# Written by moshca deploy/host-setup.sh; read by moshca-host-sync.service.
MOSHCA_SERVER=$server
MOSHCA_CA_CERT=$real_etc_dir/ca-tls.pem
EOF
say "wrote $etc_dir/host.env (server $server)"

# 3. Principals per local account (AuthorizedPrincipalsFile /etc/ssh/auth_principals/%u).
install -d -m 0755 "$ssh_dir" "$ssh_dir/auth_principals" "$ssh_dir/sshd_config.d"
for spec in "${principals[@]}"; do
	account=${spec%%=*} principal=${spec#*=}
	[[ $spec == *=* && $account =~ ^[a-z_][a-z0-9_-]*[$]?$ ]] ||
		die "--principal wants ACCOUNT=PRINCIPAL with a local account name, got: $spec"
	[[ $principal =~ ^[A-Za-z0-9._][A-Za-z0-9._@-]{0,63}$ ]] ||
		die "principal $principal is not one moshca signs" "letters, digits and . _ @ -, e.g. postgres@db-prod"
	file=$ssh_dir/auth_principals/$account
	if [[ -f $file ]] && grep -qxF -- "$principal" "$file"; then
		say "$file already lists $principal"
	else
		{ [[ -f $file ]] && cat "$file"; printf '%s\n' "$principal"; } | write_file "$file" 0644
		say "$file: certificates with principal $principal may log in as $account"
	fi
done

# 4. CA keys and KRL before sshd reads the drop-in.
say "fetching CA keys and KRL into $ssh_dir"
MOSHCA_SERVER=$server MOSHCA_CA_CERT=$etc_dir/ca-tls.pem HOME=/nonexistent \
	"$bin" host sync --dir "$ssh_dir" ||
	die "moshca host sync failed; sshd was not changed" \
		"check --server and --ca-cert (see the errors above), then run this again"
[[ -s $ssh_dir/moshca_ca.pub && -s $ssh_dir/moshca.krl ]] ||
	die "host sync did not produce $ssh_dir/moshca_ca.pub and $ssh_dir/moshca.krl"

# 5. The sshd drop-in, validated. If sshd rejects the result, the previous drop-in (or
# none) is put back, so a failed run never leaves sshd worse off.
dropin=$ssh_dir/sshd_config.d/moshca.conf
sshd=$(command -v sshd || echo /usr/sbin/sshd)
[[ -x $sshd ]] || die "sshd not found" "install openssh-server"
validate=0
if [[ -f $sshd_config ]]; then
	validate=1
	out=$("$sshd" -t -f "$sshd_config" 2>&1) ||
		die "sshd -t -f $sshd_config fails before any change; fix that first: $out"
else
	warn "$sshd_config not found: not validated; run sshd -t on the configuration that Includes $dropin"
fi
previous=''
if [[ -f $dropin ]]; then
	previous=$(mktemp "$ssh_dir/sshd_config.d/.moshca.conf.previous.XXXXXX")
	cp -p "$dropin" "$previous"
fi
write_file "$dropin" 0644 <"$here/sshd/moshca.conf"
say "installed $dropin"
if [[ $validate -eq 1 ]]; then
	if ! out=$("$sshd" -t -f "$sshd_config" 2>&1); then
		if [[ -n $previous ]]; then
			mv -f "$previous" "$dropin"
			what="restored the previous $dropin"
		else
			rm -f "$dropin"
			what="removed $dropin again"
		fi
		die "sshd -t -f $sshd_config rejects the configuration with the drop-in; $what: $out"
	fi
	say "sshd -t -f $sshd_config: configuration is valid"
	# For these keywords the first value wins: make sure ours is the one sshd uses.
	effective=$("$sshd" -T -f "$sshd_config" -C user=root,host=localhost,addr=127.0.0.1 2>/dev/null || true)
	for pair in "trustedusercakeys $real_ssh_dir/moshca_ca.pub" "revokedkeys $real_ssh_dir/moshca.krl"; do
		grep -qixF -- "$pair" <<<"$effective" ||
			warn "sshd does not use '$pair': does $sshd_config Include sshd_config.d/*.conf before any other such line? (check: sshd -T | grep -i ${pair%% *})"
	done
fi
[[ -z $previous ]] || rm -f "$previous"

# 6. systemd: units, sshd reload, the timer.
install -d -m 0755 "$unit_dir"
for unit in moshca-host-sync.service moshca-host-sync.timer; do
	write_file "$unit_dir/$unit" 0644 <"$here/systemd/$unit"
done
say "installed moshca-host-sync.service and .timer in $unit_dir"
if [[ -n $textfile ]]; then
	install -d -m 0755 "$unit_dir/moshca-host-sync.service.d"
	write_file "$unit_dir/moshca-host-sync.service.d/textfile.conf" 0644 <<EOF
# Written by moshca deploy/host-setup.sh --textfile: node_exporter's textfile collector
# reads moshca_host_sync_last_success_timestamp_seconds from here.
[Service]
ExecStart=
ExecStart=/usr/local/bin/moshca host sync --dir $real_ssh_dir --textfile $textfile
ReadWritePaths=-$(dirname "$textfile")
EOF
	say "moshca-host-sync.service writes $textfile after every successful sync"
fi
if [[ $no_systemd -eq 1 ]]; then
	say "skipping systemctl (--no-systemd or --root): reload sshd and enable moshca-host-sync.timer yourself"
else
	systemctl daemon-reload
	if systemctl is-active --quiet ssh.service; then
		systemctl reload ssh.service
	else
		systemctl reload sshd.service
	fi
	say "reloaded sshd"
	systemctl enable --now moshca-host-sync.timer
	say "enabled moshca-host-sync.timer (every minute)"
fi

say "done: this host trusts certificates from $server"
say "verify: ssh-keygen -Q -l -f $ssh_dir/moshca.krl; sshd -T | grep -i -e trustedusercakeys -e revokedkeys"
