# Helpers for guest scripts (sourced by /init and by every /test/run.sh through it).
# Kernel command-line parameters "vmtest.<key>=<value>" are available as $VM_<key>.

# A marker line the host reads: VMTEST <key> <value>
mark() { echo "VMTEST $1 ${2:-}"; }
# Stop the test with a reason.
die() { echo "VMTEST-RESULT: FAIL $*"; exit 1; }
# Seconds since boot with two decimals (busybox sh has integer arithmetic only).
now() { cut -d' ' -f1 /proc/uptime; }

for kv in $(cat /proc/cmdline); do
  case "$kv" in
    vmtest.*=*) k=${kv#vmtest.}; eval "VM_${k%%=*}='${k#*=}'" ;;
  esac
done

# Wait until /dev/$1 has a size (ioctl-mode nbd-client returns before it has one).
wait_size() {
  i=0
  while [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" = 0 ]; do
    i=$((i + 1)); [ $i -gt 200 ] && die "/dev/$1 got no size"
    sleep 0.05
  done
}

# Wait until /dev/$1 has no size any more (after nbd-client -d).
wait_gone() {
  i=0
  while [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" != 0 ]; do
    i=$((i + 1)); [ $i -gt 200 ] && die "/dev/$1 still has a size"
    sleep 0.05
  done
}

# Value of a key on the host's control server (test/vm/harness.ts ControlServer).
ctl() { wget -q -O - "http://10.0.2.2:$VM_ctl/$1" 2>/dev/null; }

# Run the commands the host posts (ControlServer keys cmd.1, cmd.2, … ; GuestShell in
# harness.ts) until one is "exit". Each command's output comes back as "VMTEST-OUT <n> <line>"
# lines and its exit status as "VMTEST-DONE <n> <status>".
serve_commands() {
  n=1
  while :; do
    c=$(ctl "cmd.$n") || c=
    if [ -z "$c" ]; then sleep 0.1; continue; fi
    [ "$c" = exit ] && return 0
    if ( eval "$c" ) > /tmp/cmd.out 2>&1; then rc=0; else rc=$?; fi
    sed "s/^/VMTEST-OUT $n /" /tmp/cmd.out
    echo "VMTEST-DONE $n $rc"
    n=$((n + 1))
  done
}
