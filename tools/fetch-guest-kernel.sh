#!/usr/bin/env bash
# Fetch the vm runtime's guest kernel: Debian's cloud kernel package, unpacked into .cache/guest/.
# The package is named exactly (docs/runtime-vm.md says how to move to a newer one); idempotent.
set -euo pipefail
pkg="${SCALERUNNER_GUEST_KERNEL_PKG:-linux-image-6.1.0-57-cloud-amd64}"
dest="${1:-.cache/guest}"
root="$dest/$pkg"
if compgen -G "$root/boot/vmlinuz-*" > /dev/null; then
    exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching guest kernel $pkg into $root" >&2
(cd "$tmp" && apt-get download -qq "$pkg")
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
rm -rf "$root"
mv "$tmp/root" "$root"
