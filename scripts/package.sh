#!/usr/bin/env bash
# Builds the Debian packages in one command: target/debian/bitnetd_<version>_arm64.deb (every
# 64-bit Raspberry Pi: one generic aarch64 binary, kernels chosen at run time) and
# target/debian/bitnetd_<version>_amd64.deb. Package contents: [package.metadata.deb] in
# Cargo.toml and the files in systemd/.
#
#   scripts/package.sh [--arch arm64|amd64|both] [--cross]
#
# Two ways to build, as in the README's "Cross-compiling for the Pi":
# - default: plain cargo; aarch64 links with Debian's cross gcc (.cargo/config.toml names it;
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu).
# - --cross: `cross` builds in a container (docker or podman) with the repository's cross.toml
#   (cross only reads Cross.toml unless CROSS_CONFIG names the file), then cargo-deb packages
#   the binary it built.
# Needs cargo-deb (`cargo install cargo-deb --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

arches="arm64 amd64"
use_cross=0
while (($#)); do
    case $1 in
        --arch) arches=${2/both/arm64 amd64}; shift 2 ;;
        --cross) use_cross=1; shift ;;
        *) echo "usage: $0 [--arch arm64|amd64|both] [--cross]" >&2; exit 2 ;;
    esac
done

die() { echo "package.sh: $*" >&2; exit 1; }
command -v cargo-deb >/dev/null || die "cargo-deb is missing: cargo install cargo-deb --locked"

out=target/debian
mkdir -p "$out"
for arch in $arches; do
    case $arch in
        arm64) triple=aarch64-unknown-linux-gnu; strip_tool=aarch64-linux-gnu-strip ;;
        amd64) triple=x86_64-unknown-linux-gnu; strip_tool=strip ;;
        *) die "unknown architecture $arch (arm64 or amd64)" ;;
    esac
    build=()
    if ((use_cross)); then
        command -v cross >/dev/null || die "cross is missing: cargo install cross (needs docker or podman)"
        CROSS_CONFIG=cross.toml cross build --release --target "$triple" --bin bitnetd
        build=(--no-build)
    elif [[ $arch == arm64 ]]; then
        command -v aarch64-linux-gnu-gcc >/dev/null \
            || die "aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu"
    fi
    # cargo-deb strips the binary with the strip its STRIP_<triple> variable names.
    command -v "$strip_tool" >/dev/null || die "$strip_tool is missing (binutils for $arch)"
    # On an amd64 host the amd64 package is the host build (target/release, which the
    # tests built already); otherwise each architecture has its own target directory.
    target_args=(--target "$triple")
    binary=target/$triple/release/bitnetd
    if [[ $arch == amd64 && $(uname -m) == x86_64 && $use_cross == 0 ]]; then
        target_args=()
        binary=target/release/bitnetd
    fi
    deb=$(env "STRIP_$triple=$strip_tool" cargo deb "${target_args[@]}" "${build[@]}" --output "$out" | tail -1)
    [[ -f $deb ]] || die "cargo deb did not report a package for $arch"
    printf '%s: %s bytes (binary %s bytes before stripping)\n' \
        "$deb" "$(stat -c %s "$deb")" "$(stat -c %s "$binary")"
done
