#!/bin/sh
# PID 1 of the test VM (carried in the per-test overlay). It prepares the guest, runs
# /test/run.sh and reports "VMTEST-RESULT: PASS" or "VMTEST-RESULT: FAIL <why>", then
# powers off. Guest scripts use the helpers of /test/lib.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts devpts /dev/pts
ln -sf /proc/self/mounts /etc/mtab

. /test/lib.sh

modprobe -a virtio_pci virtio_net nbd crc32c_generic ext4 xfs loop || echo "VMTEST-RESULT: FAIL modprobe"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
  echo "VMTEST-RESULT: FAIL network"
mark booted "$(cut -d' ' -f1 /proc/uptime)"

( cd /test && sh -e -c ". /test/lib.sh; . /test/run.sh" ) 2>&1
rc=$?
if [ "$rc" = 0 ]; then
  echo "VMTEST-RESULT: PASS"
else
  echo "--- dmesg (tail) ---"
  dmesg | tail -n 30
  echo "VMTEST-RESULT: FAIL exit status $rc"
fi
sync
poweroff -f
