#!/usr/bin/env bash
# Builds the second OpenSSH of the interop matrix, 10.0, from Debian's source package and
# prints its installation prefix (holding bin/, sbin/ and libexec/) as the last line of
# stdout, for MOSHCA_E2E_OPENSSH_DIR. See docs/openssh-versions.md.
#
# The source comes through apt's source index of the trixie suite, read with a private apt
# configuration under the cache directory: the system's sources, lists and caches are not
# touched. The build goes to CARGO_TARGET_DIR/openssh/ (wherever cargo puts its target
# directory) and is reused while the source package's version is unchanged.
#
# Environment:
#   OPENSSH_10_VERSION  the Debian version of source package `openssh` to build
#                       (default below). When the index no longer carries it (a security
#                       update replaced it), the newest 1:10.0p1 version is built instead
#                       and named on stderr.
#   OPENSSH_10_MIRROR   Debian archive URL (default: the one the system's apt uses).
#
# Needs root for apt-get (build dependencies) and for the `sshd` privilege-separation
# account, as scripts/test.sh runs it.
set -euo pipefail

cd "$(dirname "$0")/.."

want_version="${OPENSSH_10_VERSION:-1:10.0p1-7+deb13u4}"
suite=trixie
# What the build is, beyond the version: a change here rebuilds.
build_recipe="autoconf; configure --without-pam --with-privsep-path=/run/sshd; sshd sshd-session sshd-auth ssh ssh-agent ssh-add ssh-keygen"

say() { echo "openssh-10.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cargo metadata reported no target directory"
cache="$target_dir/openssh"
mkdir -p "$cache"

# Reuse: the stamp holds the Debian version and the recipe of the build in $cache/10.0.
prefix="$cache/10.0"
stamp="$prefix/.built"
programs=(bin/ssh bin/ssh-agent bin/ssh-add bin/ssh-keygen sbin/sshd libexec/sshd-session libexec/sshd-auth)
built_ok() {
    [ -f "$stamp" ] || return 1
    for p in "${programs[@]}"; do [ -x "$prefix/$p" ] || return 1; done
}

ensure_privsep() {
    # sshd refuses to start without its unprivileged account and an empty root-owned
    # directory to chroot into; Debian's openssh-server makes both for 9.2.
    if ! getent passwd sshd >/dev/null; then
        as_root useradd --system --home-dir /run/sshd --shell /usr/sbin/nologin --no-create-home sshd
    fi
    as_root mkdir -p /run/sshd
    as_root chmod 0755 /run/sshd
}

# The Debian archive the system's apt reads, from the policy of its own main suite.
mirror="${OPENSSH_10_MIRROR:-}"
if [ -z "$mirror" ]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    mirror=$(apt-cache policy 2>/dev/null |
        awk -v s="$codename/main" '$3 == s && $2 ~ /^https?:\/\// { print $2; exit }')
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi
security_mirror="${mirror%/debian}/debian-security"

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc"
cat >"$apt_dir/etc/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security_mirror $suite-security main
EOF
apt_private=(
    -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Cache::archives=$apt_dir/cache/archives"
    -o "APT::Sandbox::User=root"
)

# The version to build: the pinned one when the index has it, else the newest 10.0p1.
# A stamp that matches the pinned version needs no index at all.
if built_ok && grep -qxF "version: $want_version" "$stamp" && grep -qxF "recipe: $build_recipe" "$stamp"; then
    ensure_privsep
    say "reusing OpenSSH $want_version in $prefix"
    echo "$prefix"
    exit 0
fi

started=$(date +%s)
say "fetching the $suite source index from $mirror"
# --error-on=any: a mirror that cannot be reached is an error, not a warning over old lists.
apt-get "${apt_private[@]}" -qq --error-on=any update >"$apt_dir/update.log" 2>&1 || {
    cat "$apt_dir/update.log" >&2
    die "apt-get update of the private $suite deb-src list failed"
}
available=$(apt-cache "${apt_private[@]}" showsrc openssh 2>/dev/null | sed -n 's/^Version: //p' | sort -u || true)
[ -n "$available" ] || die "the $suite source index from $mirror has no source package openssh"
if printf '%s\n' "$available" | grep -qxF "$want_version"; then
    version="$want_version"
else
    version=$(printf '%s\n' "$available" | grep '^1:10\.0p1-' | sort -V | tail -n 1 || true)
    [ -n "$version" ] || die "the $suite source index has no openssh 1:10.0p1 (has: $(echo $available))"
    say "openssh $want_version is gone from the $suite index; building $version instead"
fi

if built_ok && grep -qxF "version: $version" "$stamp" && grep -qxF "recipe: $build_recipe" "$stamp"; then
    ensure_privsep
    say "reusing OpenSSH $version in $prefix"
    echo "$prefix"
    exit 0
fi

# Build dependencies, installed only when missing.
missing=()
for pkg in gcc make autoconf dpkg-dev libssl-dev zlib1g-dev libcrypt-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing build dependencies: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

src="$cache/src"
rm -rf "$src" "$prefix"
mkdir -p "$src"
say "downloading source package openssh=$version"
(cd "$src" && apt-get "${apt_private[@]}" -qq source --download-only "openssh=$version") >"$cache/source.log" 2>&1 || {
    cat "$cache/source.log" >&2
    die "apt-get source openssh=$version failed"
}
dsc=$(ls "$src"/openssh_*.dsc)
# apt checked the files against the signed index; dpkg-source applies Debian's patches.
(cd "$src" && dpkg-source --no-check -x "$dsc" tree) >"$cache/build.log" 2>&1 || {
    cat "$cache/build.log" >&2
    die "dpkg-source could not unpack $dsc"
}
fetched=$(date +%s)

say "building OpenSSH $version (log: $cache/build.log)"
build() {
    cd "$src/tree"
    # Debian's patches change configure.ac; regenerate as dh_autoreconf would.
    autoconf
    autoheader
    ./configure --prefix="$prefix" --sysconfdir="$prefix/etc" --libexecdir="$prefix/libexec" \
        --with-privsep-path=/run/sshd --without-pam
    make -j"$(nproc)" sshd sshd-session sshd-auth ssh ssh-agent ssh-add ssh-keygen
    mkdir -p "$prefix/bin" "$prefix/sbin" "$prefix/libexec" "$prefix/etc"
    install -m 0755 ssh ssh-agent ssh-add ssh-keygen "$prefix/bin/"
    install -m 0755 sshd "$prefix/sbin/"
    # sshd runs these from the libexec directory compiled in above.
    install -m 0755 sshd-session sshd-auth "$prefix/libexec/"
    install -m 0644 moduli "$prefix/etc/moduli"
}
if ! (build) >>"$cache/build.log" 2>&1; then
    tail -n 40 "$cache/build.log" >&2
    die "building OpenSSH $version failed (whole log: $cache/build.log)"
fi
built=$(date +%s)
printf 'version: %s\nrecipe: %s\nssh -V: %s\n' "$version" "$build_recipe" \
    "$("$prefix/bin/ssh" -V 2>&1)" >"$stamp"
rm -rf "$src"
ensure_privsep
say "built $("$prefix/bin/ssh" -V 2>&1) in $prefix: fetch $((fetched - started)) s, build $((built - fetched)) s"
echo "$prefix"
