#!/usr/bin/env bash
# nbdkit sh plugin: a disk backed by $FAULT_DISK_IMAGE whose pwrite or flush fails on demand.
# A trigger file $FAULT_DISK_TRIGGERS/<op> holding "ERRNO SKIP OFFSET" makes <op> fail with ERRNO
# after SKIP more calls succeed, at any offset ("any") or only at OFFSET. Each injected failure
# appends a line to $FAULT_DISK_TRIGGERS/hits. (nbdkit's error filter has no flush hook.)
set -u
img=$FAULT_DISK_IMAGE
dir=$FAULT_DISK_TRIGGERS

inject() {
  local file=$dir/$1 errno skip offset
  [[ -e $file ]] || return 0
  read -r errno skip offset <"$file"
  [[ $offset == any || $offset == "$2" ]] || return 0
  if ((skip > 0)); then
    echo "$errno $((skip - 1)) $offset" >"$file"
    return 0
  fi
  echo "$1 $2 $errno" >>"$dir/hits"
  echo "$errno injected $1 failure" >&2
  exit 1
}

case "$1" in
  thread_model) echo serialize_all_requests ;;
  get_size) stat -L -c %s "$img" ;;
  can_write | can_flush) exit 0 ;;
  can_trim | can_zero | can_extents | can_multi_conn) exit 3 ;;
  pread) exec dd if="$img" iflag=skip_bytes,count_bytes skip="$4" count="$3" status=none ;;
  pwrite)
    inject pwrite "$4"
    exec dd of="$img" oflag=seek_bytes conv=notrunc seek="$4" status=none
    ;;
  flush)
    inject flush 0
    exec sync -d "$img"
    ;;
  *) exit 2 ;;
esac
