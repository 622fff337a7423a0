# PID 1 of the job's own pid namespace, in its own mount namespace: give the job its /proc
# and /dev, then become the job's command inside its root filesystem.
/bin/busybox mount -t proc proc /mnt/root/proc
/bin/busybox mount -t devtmpfs devtmpfs /mnt/root/dev
exec /bin/busybox chroot /mnt/root "$@"
