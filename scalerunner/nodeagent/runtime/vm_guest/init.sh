#!/bin/busybox sh
# PID 1 of a Scalerunner job VM (docs/runtime-vm.md). The host appended /job/run.sh to this
# initramfs; the job's root filesystem is /dev/vda (ext4). Ports on virtio-serial:
# scalerunner.stdout, scalerunner.stderr and scalerunner.status ("exit N" or "fault MESSAGE").
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The KVM probe only needs to see the guest reach userland.
if grep -q scalerunner.probe /proc/cmdline; then
    echo scalerunner-probe-ok > /dev/console
    poweroff -f
fi

STATUS=/dev/console
fault() {
    echo "fault $*" > "$STATUS"
    echo "scalerunner guest: $*" > /dev/console
    poweroff -f
}

# Dependencies first: the cloud kernel has virtio only as modules.
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console virtio_blk; do
    insmod "/lib/modules/$m.ko" || fault "insmod $m failed"
done

# Device probing is asynchronous: wait (up to ~10 s) for the three ports and the disk.
OUT= ERR=
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        case "$(cat "$p/name")" in
            scalerunner.stdout) OUT="/dev/${p##*/}" ;;
            scalerunner.stderr) ERR="/dev/${p##*/}" ;;
            scalerunner.status) STATUS="/dev/${p##*/}" ;;
        esac
    done
    [ -n "$OUT" ] && [ -n "$ERR" ] && [ "$STATUS" != /dev/console ] && [ -b /dev/vda ] && break
    i=$((i + 1))
    usleep 50000
done
[ -n "$OUT" ] && [ -n "$ERR" ] && [ -b /dev/vda ] || fault "virtio ports or disk missing"

mount -t ext4 /dev/vda /mnt/root || fault "cannot mount the job's root filesystem"
mkdir -p /mnt/root/proc /mnt/root/dev /mnt/root/tmp

# run.sh sets "$@" to the job's argv and JOB_ENV to its environment (quoted by the host).
. /job/run.sh
eval "env -i $JOB_ENV /bin/busybox unshare -m -p -f /bin/busybox sh /enter.sh \"\$@\"" \
    < /dev/null > "$OUT" 2> "$ERR"
code=$?
sync
echo "exit $code" > "$STATUS"
poweroff -f
