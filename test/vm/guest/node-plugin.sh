# The node plugin in the guest: `thinpool serve --role node` on tcp://0.0.0.0:$VM_csiport (the
# host reaches it through hostfwd), then the host's commands (serve_commands) until "exit".
KUBELET=/var/lib/kubelet
STATE=/var/lib/thinpool
SCRATCH=/tmp

# What a volume could leave behind: mounts below the kubelet directory, nbd devices that are
# connected or sized, nbd-reconnect processes, loop devices and staged-volume records.
leftovers() {
  grep " $KUBELET" /proc/mounts | cut -d' ' -f1,2 | sed 's/^/mount /' || true
  for d in /sys/block/nbd*; do
    if [ -e "$d/pid" ] || [ "$(cat "$d/size")" != 0 ]; then echo "nbd ${d##*/}"; fi
  done
  for p in /proc/[0-9]*; do
    case "$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null)" in
      *nbd-reconnect*) echo "helper ${p#/proc/}" ;;
    esac
  done
  losetup -a
  ls "$STATE/staged" 2>/dev/null | sed 's/^/state /'
}

# A tree of files with a checksum list ($2) and a symlink, written into $1 and synced.
write_tree() {
  mkdir -p "$1/d/e"
  dd if=/dev/urandom of="$1/big" bs=1M count=16 2>/dev/null
  for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of="$1/d/f$i" bs=4k count=$i 2>/dev/null; done
  echo hello > "$1/d/e/small"
  ln -s d/e/small "$1/link"
  (cd "$1" && find . -type f | sort | xargs sha256sum) > "$2"
  sync
}

check_tree() {
  (cd "$1" && sha256sum -c "$2" > /tmp/check 2>&1) || { grep -v ': OK' /tmp/check; return 1; }
  [ "$(readlink "$1/link")" = d/e/small ] || { echo "symlink lost"; return 1; }
  echo "$(grep -c ': OK' /tmp/check) files intact"
}

# Writes and fsyncs 256 KiB files into $1 until the host sets phase=stop; every file whose
# fsync returned is listed with its checksum in /tmp/acked. Markers go to the console.
start_writer() {
  (
    n=0
    : > /tmp/acked
    while [ "$(ctl phase)" != stop ]; do
      n=$((n + 1))
      t0=$(now)
      if ! dd if=/dev/urandom of="$1/w$n" bs=64k count=4 2>/dev/null; then mark ioerror "write w$n"; break; fi
      if ! sync "$1/w$n"; then mark ioerror "fsync w$n"; break; fi
      (cd "$1" && sha256sum "w$n") >> /tmp/acked
      mark wrote "$n $(echo "$(now) $t0" | awk '{ printf "%.2f", $1 - $2 }')"
    done
    mark writer-done "$(wc -l < /tmp/acked)"
  ) > /dev/console 2>&1 &
}

start_plugin() {
  node /opt/thinpool/dist/cli/main.js serve --role node --endpoint "tcp://0.0.0.0:$VM_csiport" \
    --node-id vm --state-dir "$STATE" --kubelet-dirs "$KUBELET" --attach-method kernel \
    --nbd-request-timeout 5 --nbd-dead-connection-timeout 300 >> /tmp/node.log 2>&1 &
  echo $! > /tmp/node.pid
}

# What the end of the node plugin's container does: the plugin and every helper it started
# are killed; the kernel devices and mounts stay.
kill_plugin() {
  kill -9 "$(cat /tmp/node.pid)"
  for p in /proc/[0-9]*; do
    case "$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null)" in
      *nbd-reconnect*) kill -9 "${p#/proc/}" ;;
    esac
  done
  sleep 0.2
}

restart_plugin() {
  kill_plugin
  start_plugin
}

# e2fsck -fn or xfs_repair -n of an export, attached read-only on a spare device:
# <ext4|xfs> <host:port> <export>.
fsck_export() {
  nbd-client "${2%:*}" "${2##*:}" /dev/nbd15 -N "$3" -b 4096 -readonly > /dev/null || return 1
  wait_size nbd15
  rc=0
  if [ "$1" = xfs ]; then xfs_repair -n /dev/nbd15 || rc=$?; else e2fsck -fn /dev/nbd15 || rc=$?; fi
  nbd-client -d /dev/nbd15 > /dev/null
  wait_gone nbd15
  return $rc
}

mkdir -p "$KUBELET" "$STATE"
start_plugin
mark plugin-started "$(now)"
serve_commands
kill "$(cat /tmp/node.pid)"
