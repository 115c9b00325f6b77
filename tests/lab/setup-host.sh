#!/bin/sh
# Host set-up for the arm64 RAS lab (Debian 12 x86_64, run as root).
#
# Idempotent: apt runs only when a package is missing, binfmt is touched
# only when qemu-aarch64 is not active.  The guest-side artefacts (kernels,
# rootfs, QEMU 11 tree, initrds) are built and cached by tests/lab/build.py;
# this script only prepares the host tools those builds need.
set -eu

# Host tools.  --no-install-recommends keeps the download small; ipxe-qemu
# is deliberately absent (every QEMU line passes -nic none or an explicit
# NIC model whose ROM is not needed, see reference §8.2).
PKGS="qemu-system-arm qemu-efi-aarch64 qemu-user-static binfmt-support
      mmdebstrap arch-test gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      make cpio kmod e2fsprogs zstd xz-utils ca-certificates"

missing=""
for p in $PKGS; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || missing="$missing $p"
done

if [ -n "$missing" ]; then
    echo "setup-host: installing:$missing"
    # The host's lists may be stale or absent on a fresh CI machine.  A
    # failing third-party source must not stop us: only Debian is needed.
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $missing
else
    echo "setup-host: host packages present"
fi

# binfmt: mmdebstrap --arch=arm64 runs the arm64 maintainer scripts through
# qemu-user.  On containers binfmt_misc may not be mounted yet.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    echo "setup-host: enabling binfmt qemu-aarch64"
    update-binfmts --enable qemu-aarch64
fi
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "setup-host: qemu-aarch64 binfmt still inactive" >&2; exit 1; }
# arch-test confirms an arm64 binary really runs (binfmt + interpreter).
arch-test arm64 >/dev/null || { echo "setup-host: arm64 binaries do not run" >&2; exit 1; }
echo "setup-host: ok"
