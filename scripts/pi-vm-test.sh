#!/usr/bin/env bash
# End-to-end deployment test: boots an arm64 Debian bookworm with systemd as PID 1 under
# qemu-system-aarch64 (TCG, -M virt), installs the arm64 .deb with dpkg -i, and checks that
# the packaged units serve a model over the socket and MQTT (scripts/vm/guest-test.sh says
# what exactly). Run as root (debootstrap, mkfs.ext4 -d keeps ownership).
#
#   scripts/pi-vm-test.sh [--prepare] [--deb FILE] [--model FILE] [--cpu "cortex-a72 cortex-a76"]
#
# --prepare only builds the cached root file system.
# The root file system is built once from Debian's archive and cached in $BITNETD_VM_CACHE
# (default /var/cache/bitnetd-vm); each test boots it with snapshot=on (writes go to a
# throw-away file), so a second run only boots. Needs: debootstrap, qemu-system-arm,
# e2fsprogs, cpio.
#
# This sandbox has no binfmt_misc, so foreign binaries cannot run in a chroot: debootstrap's
# second stage runs inside the guest instead, on a first boot from a small initramfs made
# here (busybox and the virtio/ext4 modules, all from Debian's arm64 packages). That boot
# also lets Debian's linux-image postinst make the real initrd, which every later boot uses.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cache=${BITNETD_VM_CACHE:-/var/cache/bitnetd-vm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
cpus="cortex-a72 cortex-a76"
deb=""
prepare_only=0
model=${BITNETD_VM_MODEL:-../shared/reference/tiny-i2_s.gguf}
# Guest size: small on purpose (the Pi Zero 2 W has 512 MB; 1 GB keeps TCG boots quick).
mem=1024
smp=2
# Per boot, generous: TCG on a shared 2-core host is slow.
boot_timeout=${BITNETD_VM_TIMEOUT:-900}

while (($#)); do
    case $1 in
        --deb) deb=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --cpu) cpus=$2; shift 2 ;;
        --prepare) prepare_only=1; shift ;;
        *) echo "usage: $0 [--prepare] [--deb FILE] [--model FILE] [--cpu \"CPU...\"]" >&2; exit 2 ;;
    esac
done

log() { printf '[pi-vm-test %s] %s\n' "$(date -u +%T)" "$*"; }
die() { log "FAIL: $*"; exit 1; }

for tool in debootstrap proot qemu-aarch64 qemu-system-aarch64 mkfs.ext4 dpkg-deb cpio unshare; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap proot qemu-user qemu-system-arm e2fsprogs cpio)"
done
mkdir -p "$cache"
base=$cache/$suite-arm64.img
kernel=$cache/vmlinuz
initrd=$cache/initramfs.gz
start_all=$SECONDS

# Runs qemu until the guest powers off; the serial console goes to $2.
boot() {
    local cpu=$1 console=$2
    shift 2
    timeout --foreground "$boot_timeout" qemu-system-aarch64 -M virt -cpu "$cpu" -smp "$smp" -m "$mem" \
        -nographic -monitor none -serial "file:$console" -no-reboot -nic none "$@" </dev/null \
        || die "qemu ended with $? (timeout $boot_timeout s?): see $console"
}

build_base() {
    local stage=$cache/stage1 kdebs=$cache/kernel-debs x=$cache/extracted
    log "building the $suite arm64 root file system in $cache (once)"
    rm -rf "$stage" "$kdebs" "$x"
    # minbase + what the test needs: systemd as init, mosquitto for the MQTT check.
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=systemd-sysv,udev,dbus,kmod,mosquitto,mosquitto-clients,procps \
        "$suite" "$stage" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || die "debootstrap: see $cache/debootstrap.log"
    # The kernel, and busybox for the initramfs, are only downloaded: their files are used
    # from here, not installed in the guest.
    debootstrap --download-only --arch=arm64 --variant=minbase \
        --include=linux-image-arm64,busybox-static "$suite" "$kdebs" "$mirror" \
        >>"$cache/debootstrap.log" 2>&1 || die "debootstrap --download-only: see $cache/debootstrap.log"

    # The second stage runs the guest's own dpkg and maintainer scripts: proot sends every
    # exec through qemu-aarch64 (no binfmt needed). A private mount namespace keeps the proc
    # and sys mounts that debootstrap makes inside the tree away from the host.
    local guest=(unshare --mount --propagation private env DEBOOTSTRAP_DIR=/debootstrap
        proot -q qemu-aarch64 -r "$stage" -w /)
    log "debootstrap's second stage under qemu-aarch64 (proot): takes a while"
    local t0=$SECONDS
    "${guest[@]}" /debootstrap/debootstrap --second-stage >>"$cache/debootstrap.log" 2>&1 \
        || log "the second stage stopped (proot aborts in systemd's postinst): dpkg finishes it"
    cp scripts/vm/guest-finish.sh "$stage/finish.sh"
    "${guest[@]}" /bin/sh /finish.sh >>"$cache/debootstrap.log" 2>&1 \
        || die "finishing the second stage: see $cache/debootstrap.log"
    rm -rf "$stage/finish.sh" "$stage/host-rootfs"
    log "second stage took $((SECONDS - t0)) s"

    mkdir -p "$x"
    dpkg-deb -x "$(ls "$kdebs"/var/cache/apt/archives/linux-image-[0-9]*_arm64.deb)" "$x"
    dpkg-deb -x "$(ls "$kdebs"/var/cache/apt/archives/busybox-static_*_arm64.deb)" "$x"
    local version
    version=$(ls "$x/lib/modules")
    cp "$x/boot/vmlinuz-$version" "$kernel"
    # The kernel's modules in the guest too (for whatever it loads later), indexed by depmod.
    mkdir -p "$stage/usr/lib/modules"
    cp -a "$x/lib/modules/$version" "$stage/usr/lib/modules/"
    cp scripts/vm/guest-setup.sh "$stage/setup.sh"
    "${guest[@]}" /bin/sh /setup.sh "$version" >>"$cache/debootstrap.log" 2>&1 \
        || die "guest setup: see $cache/debootstrap.log"

    # The initramfs: busybox and the modules that reach an ext4 root on virtio-blk (in
    # dependency order); its init mounts the root and hands over to systemd.
    local ird=$cache/initramfs m
    rm -rf "$ird"
    mkdir -p "$ird/bin" "$ird/proc" "$ird/sys" "$ird/dev" "$ird/root"
    cp "$x/bin/busybox" "$ird/bin/"
    local mods=(drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci_legacy_dev
        drivers/virtio/virtio_pci drivers/block/virtio_blk lib/crc16 fs/mbcache fs/jbd2/jbd2
        crypto/crc32c_generic fs/ext4/ext4)
    for m in "${mods[@]}"; do
        cp "$x/lib/modules/$version/kernel/$m.ko" "$ird/"
    done
    sed "s|@MODULES@|$(for m in "${mods[@]}"; do printf '%s ' "${m##*/}"; done)|" \
        scripts/vm/initramfs-init.sh >"$ird/init"
    chmod +x "$ird/init"
    (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd"

    rm -f "$base.tmp"
    mkfs.ext4 -q -L root -d "$stage" "$base.tmp" 3G
    mv "$base.tmp" "$base"
    rm -rf "$stage" "$kdebs" "$x" "$ird"
}

[[ -f $base && -f $kernel && -f $initrd ]] || build_base
((prepare_only)) && { log "root file system ready: $base"; exit 0; }

if [[ -z $deb ]]; then
    deb=$(ls -t target/debian/bitnetd_*_arm64.deb 2>/dev/null | head -1 || true)
fi
[[ -f $deb ]] || die "no arm64 .deb: run scripts/package.sh first or pass --deb"
[[ -f $model ]] || die "no model at $model: pass --model (a GGUF, e.g. from bitnetd gen-dummy)"

# The payload disk: the .deb, the model, the guest-side test.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/payload"
cp "$deb" "$work/payload/bitnetd_arm64.deb"
cp "$model" "$work/payload/model.gguf"
cp scripts/vm/guest-test.sh "$work/payload/run.sh"
mkfs.ext4 -q -d "$work/payload" "$work/payload.img" $(( $(du -sm "$work/payload" | cut -f1) + 64 ))M

status=0
for cpu in $cpus; do
    log "booting with -cpu $cpu"
    console=$cache/console-$cpu.log
    t0=$SECONDS
    boot "$cpu" "$console" -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyAMA0 root=/dev/vda rw panic=-1 systemd.show_status=0" \
        -drive "file=$base,format=raw,if=virtio,snapshot=on" \
        -drive "file=$work/payload.img,format=raw,if=virtio,readonly=on"
    # The guest's verdict lines (scripts/vm/guest-test.sh prints them on the console).
    grep -a 'VMTEST' "$console" | sed 's/^.*VMTEST/VMTEST/' || true
    if grep -aq 'VMTEST RESULT PASS' "$console"; then
        log "-cpu $cpu: PASS in $((SECONDS - t0)) s"
    else
        log "-cpu $cpu: FAIL in $((SECONDS - t0)) s (console: $console)"
        status=1
    fi
done
log "total $((SECONDS - start_all)) s"
exit $status
