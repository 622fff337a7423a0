# PID 1 of the job's own pid namespace, in its own mount namespace: give the job its /proc
# and /dev, then become the job's command inside its root filesystem, in /work (nsenter sets
# both root and working directory; chroot would leave it in /).
/bin/busybox mount -t proc proc /mnt/root/proc
/bin/busybox mount -t devtmpfs devtmpfs /mnt/root/dev
exec /bin/busybox nsenter -F -r/mnt/root -w/mnt/root/work "$@"
