#!/bin/sh
# Finishes debootstrap's second stage inside the new root file system (scripts/pi-vm-test.sh
# runs it under proot and qemu-aarch64). proot 5.1 aborts (path.c: compare_paths2
# assertion) when systemd's postinst runs systemd-tmpfiles, which stops the second stage
# after "Unpacking the base system". Here systemd-tmpfiles is out of the way while dpkg
# unpacks and configures what is left (systemd-tmpfiles-setup.service creates the same
# files at every boot), then it is put back.
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive
[ -d /debootstrap ] || exit 0 # debootstrap finished on its own
mountpoint -q /proc || mount -t proc proc /proc
mv /usr/bin/systemd-tmpfiles /usr/bin/systemd-tmpfiles.aside
debs=$(for p in $(cat /debootstrap/base); do
    awk -v p="$p" '$1 == p { print $2 }' /debootstrap/debpaths
done)
# shellcheck disable=SC2086 # one word per package file
dpkg --force-depends --force-overwrite --force-confold --skip-same-version --unpack $debs
dpkg --force-confold --configure -a
mv /usr/bin/systemd-tmpfiles.aside /usr/bin/systemd-tmpfiles
# What debootstrap undoes at the end of a second stage: services may start again.
if [ -e /sbin/start-stop-daemon.REAL ]; then
    mv /sbin/start-stop-daemon.REAL /sbin/start-stop-daemon
fi
rm -f /usr/sbin/policy-rc.d
for p in $(cat /debootstrap/base); do
    [ "$(dpkg-query -W -f '${Status}' "$p")" = "install ok installed" ] || { echo "$p is not installed"; exit 1; }
done
rm -rf /debootstrap
umount /proc
