#!/usr/bin/env bash
# Checks a built .deb (default: the newest arm64 one in target/debian): its control fields and
# file list, the conffile, then the units exactly as packaged: `systemd-analyze verify`
# (any output counts as a failure: it only warns on unknown keys) and
# `systemd-analyze security --offline=yes` at most 2.0. Prints the sizes and the glibc floor
# (the newest GLIBC_x.y symbol version the binary needs).
#
#   scripts/check-package.sh [FILE.deb]
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:-$(ls -t target/debian/bitnetd_*_arm64.deb 2>/dev/null | head -1 || true)}
[[ -f $deb ]] || { echo "check-package.sh: no .deb (run scripts/package.sh)" >&2; exit 1; }
fail() { echo "check-package.sh: $deb: $*" >&2; exit 1; }
max_exposure=2.0

info=$(dpkg-deb -I "$deb")
arch=$(dpkg-deb -f "$deb" Architecture)
[[ $(dpkg-deb -f "$deb" Package) == bitnetd ]] || fail "Package is not bitnetd"
[[ $arch == arm64 || $arch == amd64 ]] || fail "Architecture $arch"
dpkg-deb -f "$deb" Depends | grep -q 'libc6 (>= ' || fail "Depends has no libc6 version: $(dpkg-deb -f "$deb" Depends)"
grep -qx ' /etc/bitnetd/bitnetd.toml' <<<"$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles | sed 's/^/ /')" \
    || fail "/etc/bitnetd/bitnetd.toml is not a conffile"
for script in postinst prerm postrm; do
    grep -q "^ .* $script" <<<"$info" || fail "no $script (units enabled and started, sysusers, tmpfiles)"
done
postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./postinst)
for step in systemd-sysusers systemd-tmpfiles "deb-systemd-helper enable" deb-systemd-invoke; do
    grep -q "$step" <<<"$postinst" || fail "the postinst does not run $step"
done

files=$(dpkg-deb -c "$deb" | awk '{print $1, $6}')
expect() { # MODE PATH: a file the package must hold, with its permissions
    grep -qx -- "$1 $2" <<<"$files" || fail "no $2 with mode $1 in: $files"
}
expect -rwxr-xr-x ./usr/bin/bitnetd
expect -rw-r--r-- ./usr/lib/systemd/system/bitnetd.service
expect -rw-r--r-- ./usr/lib/systemd/system/bitnetd.socket
expect -rw-r--r-- ./usr/lib/sysusers.d/bitnetd.conf
expect -rw-r--r-- ./usr/lib/tmpfiles.d/bitnetd.conf
expect -rw-r--r-- ./etc/bitnetd/bitnetd.toml
expect -rw-r--r-- ./usr/share/doc/bitnetd/README.md
expect -rw-r--r-- ./usr/share/doc/bitnetd/copyright

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
grep -q '^d /var/lib/bitnetd/models ' "$root/usr/lib/tmpfiles.d/bitnetd.conf" || fail "tmpfiles.d makes no model directory"
grep -q '^u bitnetd ' "$root/usr/lib/sysusers.d/bitnetd.conf" || fail "sysusers.d makes no bitnetd user"

# The units as installed, beside the host's own units (targets, sockets.target...): verify
# resolves everything under --root, ExecStart= included.
mkdir -p "$root/usr/lib/systemd/system"
cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/" 2>/dev/null \
    || cp -an /lib/systemd/system/. "$root/usr/lib/systemd/system/"
out=$(systemd-analyze verify --root="$root" bitnetd.service bitnetd.socket 2>&1) \
    || fail "systemd-analyze verify: $out"
[[ -z $out ]] || fail "systemd-analyze verify said: $out"
exposure=$(systemd-analyze security --offline=yes --root="$root" bitnetd.service | tail -1)
systemd-analyze security --offline=yes --root="$root" --threshold="${max_exposure/./}" \
    bitnetd.service >/dev/null || fail "$exposure (more than $max_exposure)"

floor=$(readelf --dyn-syms -W "$root/usr/bin/bitnetd" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
dpkg-deb -f "$deb" Depends | grep -q "libc6 (>= ${floor#GLIBC_})" \
    || fail "the binary needs $floor but the package Depends: $(dpkg-deb -f "$deb" Depends)"
echo "$deb: ok ($arch, $(stat -c %s "$deb") bytes; /usr/bin/bitnetd $(stat -c %s "$root/usr/bin/bitnetd") bytes, needs $floor; Depends: $(dpkg-deb -f "$deb" Depends))"
echo "units: systemd-analyze verify clean; ${exposure#→ }"
