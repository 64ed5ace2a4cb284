#!/bin/busybox sh
# /init of the test guest's initramfs (scripts/pi-vm-test.sh fills in @MODULES@): loads the
# virtio and ext4 modules of Debian's kernel, mounts the root disk, starts systemd.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in @MODULES@; do
    insmod "/$m.ko"
done
for i in 1 2 3 4 5 6 7 8 9 10; do
    [ -b /dev/vda ] && break
    sleep 1
done
mount -t ext4 -o rw /dev/vda /root || { echo "initramfs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
