#!/usr/bin/env bash
# Fetch the Raspberry Pi 4 boot files into DIR (default .cache/raspi): the boot firmware from
# Debian's raspi-firmware (component non-free-firmware) and the kernel and bcm2711-rpi-4-b.dtb
# from Debian's arm64 kernel package. Idempotent (a complete DIR is left alone).
#
# The machine's apt configuration is not touched: the package lists are fetched with a
# throwaway configuration in a temporary directory (its own sources list naming
# non-free-firmware, its own lists and cache, arm64 added to APT::Architectures there only),
# so no `dpkg --add-architecture` and no edited sources are left behind (MACHINE.md).
#
# Result:  DIR/firmware/{start4.elf,fixup4.dat,start4cd.elf,fixup4cd.dat,...}
#          DIR/kernel/vmlinuz   DIR/kernel/bcm2711-rpi-4-b.dtb   DIR/VERSIONS
set -euo pipefail
dest="${1:-.cache/raspi}"
kernel_meta="${SCALERUNNER_RASPI_KERNEL_META:-linux-image-arm64}"
if [[ -s "$dest/firmware/start4.elf" && -s "$dest/kernel/vmlinuz" && -s "$dest/kernel/bcm2711-rpi-4-b.dtb" ]]; then
    exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tmp=$(cd "$tmp" && pwd)
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/sources.d" "$tmp/debs"
cat > "$tmp/sources.list" <<SOURCES
deb http://deb.debian.org/debian bookworm main non-free-firmware
deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware
deb http://deb.debian.org/debian bookworm-updates main non-free-firmware
SOURCES
apt_opts=(
    -o "Dir::Etc::sourcelist=$tmp/sources.list"
    -o "Dir::Etc::sourceparts=$tmp/sources.d"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "APT::Architectures::=amd64"
    -o "APT::Architectures::=arm64"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"  # the temporary directory is not the _apt user's to write
)
echo "setup: fetching the Raspberry Pi 4 boot files into $dest" >&2
apt-get "${apt_opts[@]}" update -qq
# linux-image-arm64 is a meta package: the exact kernel package is its dependency.
kernel_pkg=$(apt-cache "${apt_opts[@]}" depends "$kernel_meta:arm64" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
kernel_pkg="${kernel_pkg%:arm64}"
[[ -n "$kernel_pkg" ]] || { echo "fetch-raspi-files: no kernel package behind $kernel_meta:arm64" >&2; exit 1; }
(cd "$tmp/debs" && apt-get "${apt_opts[@]}" download -qq raspi-firmware "$kernel_pkg:arm64")
dpkg-deb -x "$tmp"/debs/raspi-firmware_*.deb "$tmp/fw"
dpkg-deb -x "$tmp"/debs/"$kernel_pkg"_*.deb "$tmp/kern"
mkdir -p "$tmp/out/firmware" "$tmp/out/kernel"
# The Pi 4 (and CM4) files: start4*.elf and fixup4*.dat; bootcode.bin is for older Pis only.
cp "$tmp"/fw/usr/lib/raspi-firmware/start4*.elf "$tmp"/fw/usr/lib/raspi-firmware/fixup4*.dat "$tmp/out/firmware/"
cp "$tmp"/kern/boot/vmlinuz-* "$tmp/out/kernel/vmlinuz"
cp "$tmp"/kern/usr/lib/linux-image-*/broadcom/bcm2711-rpi-4-b.dtb "$tmp/out/kernel/"
{
    echo "raspi-firmware $(dpkg-deb -f "$tmp"/debs/raspi-firmware_*.deb Version)"
    echo "$kernel_pkg $(dpkg-deb -f "$tmp"/debs/"$kernel_pkg"_*.deb Version)"
} > "$tmp/out/VERSIONS"
chmod -R a+rX,go-w "$tmp/out"
rm -rf "$dest/firmware" "$dest/kernel" "$dest/VERSIONS"
mv "$tmp/out/firmware" "$tmp/out/kernel" "$tmp/out/VERSIONS" "$dest/"
