#!/bin/sh
# Run once inside the new root file system by scripts/pi-vm-test.sh (under proot and
# qemu-aarch64) after debootstrap: what the test guest needs besides its packages.
# $1: the kernel version, whose modules were copied in.
set -e
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
depmod "$1"
echo bitnetd-vm >/etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 bitnetd-vm\n::1 localhost ip6-localhost ip6-loopback\n' >/etc/hosts
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >/etc/fstab
# A console login without a password, for looking around by hand.
passwd -d root
# The test payload arrives on a second disk; this unit runs it once per boot, then powers off.
cat >/etc/systemd/system/vm-payload.service <<'UNIT'
[Unit]
Description=Run the test payload from /dev/vdb, then power off
After=multi-user.target
[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /payload
ExecStartPre=/bin/mount -o ro /dev/vdb /payload
ExecStart=/bin/sh /payload/run.sh
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=0
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable vm-payload.service
apt-get clean
rm -f /setup.sh
