#!/bin/sh
# /init of a Scalerunner node image (docs/images.md): the whole Debian root is the initramfs, in
# RAM. Mount the kernel's filesystems, load the drivers of the hardware present, get an address
# by DHCP, name the host after scalerunner.node=, then hand over to busybox init, which runs the
# agent and restarts it whenever it exits (/usr/lib/scalerunner/run-agent).
# Progress goes to /dev/console (the last console= of the command line), one line per step.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "scalerunner-init: $*" > /dev/console; }

busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev 2> /dev/null  # the kernel may have mounted it already
mkdir -p /dev/pts /dev/shm /run /tmp
busybox mount -t devpts devpts /dev/pts
busybox mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
busybox mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
# The process runtime limits each job's cpu, memory and pids in a cgroup of its own.
busybox mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
chmod 1777 /tmp
say "image $(cat /etc/scalerunner/image-version 2> /dev/null), kernel $(uname -r), $(grep MemTotal /proc/meminfo | tr -s ' ')"

NODE=
for word in $(cat /proc/cmdline); do
    case "$word" in
        scalerunner.node=*) NODE="${word#scalerunner.node=}" ;;
    esac
done
if [ -n "$NODE" ]; then
    hostname "$NODE"
    echo "$NODE" > /etc/hostname
    echo "127.0.1.1 $NODE" >> /etc/hosts
    say "node $NODE"
else
    say "no scalerunner.node= on the kernel command line: the agent needs it or node= in its config"
fi

# Load the driver of every device present, by its modalias; a bus driver (virtio_pci) makes new
# devices appear (virtio_net), so repeat until a pass loads nothing new.
loaded=-1
pass=0
while [ $pass -lt 8 ]; do
    cat /sys/bus/*/devices/*/modalias 2> /dev/null | sort -u | xargs -r modprobe -q -a -b 2> /dev/null
    now=$(wc -l < /proc/modules)
    [ "$now" = "$loaded" ] && break
    loaded=$now
    pass=$((pass + 1))
    sleep 0.2
done
say "drivers loaded: $loaded modules"

# DHCP on each interface until one gets a lease; udhcpc stays in the background to renew it.
ifaces() {
    for d in /sys/class/net/*; do
        n="${d##*/}"
        [ -e "$d" ] || continue
        [ "$n" = lo ] || [ -e "$d/wireless" ] || echo "$n"
    done
}
busybox ip link set lo up
try=0
while :; do
    got=
    for n in $(ifaces); do
        busybox ip link set "$n" up
        if busybox udhcpc -i "$n" -n -t 5 -T 2 -A 1 -S -s /usr/lib/scalerunner/udhcpc.script > /dev/null 2>&1; then
            got=$n
            break
        fi
    done
    [ -n "$got" ] && break
    try=$((try + 1))
    say "no DHCP lease yet on: $(ifaces | tr '\n' ' ')(attempt $try); retrying"
    sleep 2
done
say "network: $got $(busybox ip -4 -o addr show dev "$got" | busybox awk '{print $4}') via $(busybox ip route | busybox awk '/^default/ {print $3}')"

if [ ! -e /etc/scalerunner/agent.toml ]; then
    say "/etc/scalerunner/agent.toml missing: boot this image with the node's settings initrd (docs/images.md)"
fi
say "starting scalerunner-agent (restarted whenever it exits)"
exec busybox init
