#!/bin/busybox sh
# PID 1 of a Scalerunner job VM (docs/runtime-vm.md). The host appended /job/run.sh to this
# initramfs; the job's root filesystem is /dev/vda (ext4). Ports on virtio-serial:
# scalerunner.stdout, scalerunner.stderr, scalerunner.work (a tar of /work after the job, for its
# artifacts) and scalerunner.status ("exit N" or "fault MESSAGE", always written last).
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
OUT= ERR= WORK=
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        case "$(cat "$p/name")" in
            scalerunner.stdout) OUT="/dev/${p##*/}" ;;
            scalerunner.stderr) ERR="/dev/${p##*/}" ;;
            scalerunner.status) STATUS="/dev/${p##*/}" ;;
            scalerunner.work) WORK="/dev/${p##*/}" ;;
        esac
    done
    [ -n "$OUT" ] && [ -n "$ERR" ] && [ -n "$WORK" ] && [ "$STATUS" != /dev/console ] && [ -b /dev/vda ] && break
    i=$((i + 1))
    usleep 50000
done
[ -n "$OUT" ] && [ -n "$ERR" ] && [ -n "$WORK" ] && [ -b /dev/vda ] || fault "virtio ports or disk missing"

mount -t ext4 /dev/vda /mnt/root || fault "cannot mount the job's root filesystem"
mkdir -p /mnt/root/proc /mnt/root/dev /mnt/root/tmp /mnt/root/work

# Loopback always; a NIC only when the host gave one (scalerunner.net=1 on the kernel command
# line: QEMU user-mode networking, whose fixed addresses are 10.0.2.15 for us, 10.0.2.2 the host,
# 10.0.2.3 its DNS relay). Static, no DHCP: slirp's addresses never change and a lease costs time.
ip link set lo up
if grep -q scalerunner.net=1 /proc/cmdline; then
    for m in failover net_failover virtio_net; do
        insmod "/lib/modules/$m.ko" || fault "insmod $m failed"
    done
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do
        i=$((i + 1))
        usleep 50000
    done
    [ -e /sys/class/net/eth0 ] || fault "network requested but no eth0 appeared"
    ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
        || fault "cannot configure eth0"
    # The job's resolver; an image's own resolv.conf may be a link into its /run: replace it.
    mkdir -p /mnt/root/etc && rm -f /mnt/root/etc/resolv.conf
    echo "nameserver 10.0.2.3" > /mnt/root/etc/resolv.conf || fault "cannot write /etc/resolv.conf"
fi
# The attempt's work dir as the host had it (appended to the initramfs with run.sh).
if [ -d /job/work ]; then
    cp -a /job/work/. /mnt/root/work/ || fault "cannot copy the work dir into /work"
fi

# run.sh sets "$@" to the job's argv and JOB_ENV to its environment (quoted by the host).
. /job/run.sh
# Output goes through tee so that its size is known: the status line tells the host how many
# bytes each port carried, and the guest powers off only when the host says it has them all
# (a port's last buffers may still be in flight when the guest's write returns).
mkfifo /job/out /job/err
tee "$OUT" < /job/out | wc -c > /job/out.n &
tee "$ERR" < /job/err | wc -c > /job/err.n &
eval "env -i $JOB_ENV /bin/busybox unshare -m -p -f /bin/busybox sh /enter.sh \"\$@\"" \
    < /dev/null > /job/out 2> /job/err
code=$?
wait
work=$(tar -C /mnt/root/work -cf - . 2> /dev/console | tee "$WORK" | wc -c)
# The port stays open while we wait: the guest kernel drops what arrives on a closed port.
exec 3<> "$STATUS"
echo "exit $code out=$(cat /job/out.n) err=$(cat /job/err.n) work=$work" >&3
read -t 30 ack <&3
poweroff -f
