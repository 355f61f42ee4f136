// The Linux kernel NBD client (in the test VM) against `thinpool nbd serve` on the host: both
// ways nbd-client configures the device (netlink, ioctl), ext4 and xfs round trips through a
// cold cache, discard reaching the pool as trims, a read-only snapshot, and a refused export.
import path from 'node:path';
import { makeTempDir } from '../helpers/tmp';
import {
  ControlServer,
  NbdServe,
  VmRun,
  describeVm,
  expectPass,
  mappedBlocks,
  metric,
  runVm,
  thinpool,
} from './harness';
import { note } from '../helpers/notes';

jest.setTimeout(240_000);

const tmp = makeTempDir('thinpool-vm-');
const pool = path.join(tmp.dir, 'pool');
let server: NbdServe;

/** Attach $1 as /dev/$2 with nbd-client in $VM_mode; the other arguments go to nbd-client. */
const ATTACH = `
attach() {
  name=$1; dev=$2; shift 2
  if [ "$VM_mode" = ioctl ]; then set -- "$@" -nonetlink; fi
  nbd-client 10.0.2.2 "$VM_port" /dev/$dev -N "$name" -b 4096 "$@" || die "nbd-client $name failed"
  wait_size $dev
}
detach() {
  nbd-client -d /dev/$1 >/dev/null || die "nbd-client -d $1 failed"
  wait_gone $1
}
tree_sums() { (cd "$1" && find . -type f | sort | xargs sha256sum); }
`;

const ROUND_TRIP = `${ATTACH}
round_trip() {
  fs=$1; dev=$2; name=$3
  attach "$name" $dev
  mark "$name.size" "$(($(cat /sys/block/$dev/size) * 512))"
  t0=$(now)
  case $fs in
    ext4) mkfs.ext4 -q -F /dev/$dev ;;
    xfs) mkfs.xfs -q -f /dev/$dev ;;
  esac
  mkdir -p /mnt/$dev && mount -t $fs /dev/$dev /mnt/$dev
  mkdir -p /mnt/$dev/a/b/c /mnt/$dev/empty
  i=1
  while [ $i -le 12 ]; do
    dd if=/dev/urandom of=/mnt/$dev/a/b/f$i bs=4k count=$((i * i)) 2>/dev/null
    i=$((i + 1))
  done
  dd if=/dev/urandom of=/mnt/$dev/a/b/c/big bs=1M count=16 2>/dev/null
  echo hello > /mnt/$dev/hello.txt
  ln -s hello.txt /mnt/$dev/link
  tree_sums /mnt/$dev > /tmp/$dev.before
  sync
  umount /mnt/$dev
  echo 3 > /proc/sys/vm/drop_caches
  mount -t $fs /dev/$dev /mnt/$dev
  tree_sums /mnt/$dev > /tmp/$dev.after
  cmp /tmp/$dev.before /tmp/$dev.after || die "$fs on $name: checksums differ after remount"
  [ "$(readlink /mnt/$dev/link)" = hello.txt ] || die "symlink lost"
  mark "$name.files" "$(wc -l < /tmp/$dev.after)"
  umount /mnt/$dev
  case $fs in
    ext4) e2fsck -fn /dev/$dev > /tmp/fsck 2>&1 || { cat /tmp/fsck; die "e2fsck found problems"; } ;;
    xfs) xfs_repair -n /dev/$dev > /tmp/fsck 2>&1 || { cat /tmp/fsck; die "xfs_repair found problems"; } ;;
  esac
  detach $dev
  mark "$name.seconds" "$(echo "$(now) $t0" | awk '{ print $1 - $2 }')"
}
round_trip ext4 nbd0 a
round_trip xfs nbd1 b
grep -q nbd /proc/partitions && [ "$(cat /sys/block/nbd0/size)" = 0 ] || true
`;

describeVm('kernel NBD client against thinpool nbd serve', () => {
  beforeAll(async () => {
    await thinpool(['pool', 'create', pool, '--data-size', '2G']);
    await thinpool(['thin', 'create', pool, '1', '--size', '256M']);
    await thinpool(['thin', 'create', pool, '2', '--size', '320M']);
    server = new NbdServe(pool, ['a=1', 'b=2']);
    await server.start();
  });
  afterAll(async () => {
    await server?.stop('SIGKILL');
    tmp.cleanup();
  });

  it.each(['netlink', 'ioctl'])(
    'nbd-client (%s): ext4 and xfs survive a remount with cold caches and check clean',
    async (mode) => {
      const r = expectPass(
        await runVm({ script: ROUND_TRIP, params: { mode, port: server.port }, timeoutMs: 150_000 }),
      );
      expect(r.markers['a.size']).toBe(String(256 * 2 ** 20));
      expect(r.markers['b.size']).toBe(String(320 * 2 ** 20));
      expect(Number(r.markers['a.files'])).toBe(14);
      expect(Number(r.markers['b.files'])).toBe(14);
      const m = await server.metrics();
      expect(metric(m, 'thinpool_nbd_bytes_total', { export: 'a', op: 'write' })).toBeGreaterThan(
        16 * 2 ** 20,
      );
      expect(metric(m, 'thinpool_nbd_bytes_total', { export: 'b', op: 'write' })).toBeGreaterThan(
        16 * 2 ** 20,
      );
      note(
        `${mode}: VM run ${r.durationMs} ms; ext4 ${r.markers['a.seconds']} s, xfs ${r.markers['b.seconds']} s`,
      );
    },
  );

  it('fstrim reaches the pool as trims and unmaps the blocks', async () => {
    const ctl = new ControlServer();
    await ctl.start();
    try {
      const vm = new VmRun({
        params: { mode: 'netlink', port: server.port, ctl: ctl.port },
        timeoutMs: 150_000,
        script: `${ATTACH}
attach a nbd0
mkfs.ext4 -q -F -E nodiscard /dev/nbd0
mkdir -p /mnt/a && mount -t ext4 /dev/nbd0 /mnt/a
dd if=/dev/urandom of=/mnt/a/garbage bs=1M count=48 2>/dev/null
dd if=/dev/urandom of=/mnt/a/keep bs=1M count=4 2>/dev/null
sync
mark keep "$(sha256sum < /mnt/a/keep | cut -d' ' -f1)"
mark written
i=0; until [ "$(ctl trim)" = go ]; do i=$((i + 1)); [ $i -gt 600 ] && die "no go from the host"; sleep 0.1; done
rm /mnt/a/garbage
sync
mark fstrim "$(fstrim -v /mnt/a)"
umount /mnt/a
detach nbd0
`,
      });
      await vm.waitFor(/^VMTEST written/m, 120_000);
      const usedBefore = metric(await server.metrics(), 'thinpool_pool_data_blocks_used', {});
      const trimBefore = metric(await server.metrics(), 'thinpool_nbd_bytes_total', {
        export: 'a',
        op: 'trim',
      });
      ctl.set('trim', 'go');
      const r = expectPass(await vm.result);
      const m = await server.metrics();
      const usedAfter = metric(m, 'thinpool_pool_data_blocks_used', {});
      const trimmed = metric(m, 'thinpool_nbd_bytes_total', { export: 'a', op: 'trim' }) - trimBefore;
      note(
        `trim: ${r.markers.fstrim}; server trim bytes ${trimmed}; data blocks ${usedBefore} -> ${usedAfter}`,
      );
      expect(r.markers.fstrim).toMatch(/trimmed/);
      expect(trimmed).toBeGreaterThanOrEqual(48 * 2 ** 20);
      // 48 MiB in 64 KiB blocks is 768 blocks; most of them must be back in the pool.
      expect(usedBefore - usedAfter).toBeGreaterThanOrEqual(700);
      keepSum = r.markers.keep;
    } finally {
      await ctl.stop();
    }
  });

  let keepSum = '';

  it('a read-only snapshot export attaches read-only; writes fail cleanly', async () => {
    expect(keepSum).toMatch(/^[0-9a-f]{64}$/);
    await server.stop('SIGTERM');
    const before = await mappedBlocks(pool);
    await thinpool(['thin', 'snap', pool, '3', '1']);
    server = new NbdServe(pool, ['a=1', 'b=2', 'snap=3:ro'], [], server.port);
    await server.start();
    const r = expectPass(
      await runVm({
        params: { mode: 'netlink', port: server.port, keep: keepSum },
        timeoutMs: 120_000,
        script: `${ATTACH}
attach snap nbd0 -readonly
[ "$(cat /sys/block/nbd0/ro)" = 1 ] || die "nbd0 is not read-only"
mkdir -p /mnt/s && mount -t ext4 -o ro,noload /dev/nbd0 /mnt/s
[ "$(sha256sum < /mnt/s/keep | cut -d' ' -f1)" = "$VM_keep" ] || die "snapshot content differs"
if dd if=/dev/zero of=/dev/nbd0 bs=4k count=1 oflag=direct 2>/tmp/dd.err; then die "a write to the snapshot succeeded"; fi
mark ddError "$(grep -m1 'dd:' /tmp/dd.err | tr ' ' _)"
if touch /mnt/s/new 2>/dev/null; then die "touch on the read-only mount succeeded"; fi
umount /mnt/s
detach nbd0
# Without -readonly: the server's read-only flag still makes the device read-only.
attach snap nbd1
mark roFlag "$(cat /sys/block/nbd1/ro)"
if dd if=/dev/zero of=/dev/nbd1 bs=4k count=1 oflag=direct 2>/dev/null; then die "write accepted"; fi
detach nbd1
`,
      }),
    );
    expect(r.markers.ddError).toMatch(/Operation_not_permitted|Read-only|Permission_denied/i);
    expect(r.markers.roFlag).toBe('1');
    const m = await server.metrics();
    expect(metric(m, 'thinpool_nbd_bytes_total', { export: 'snap', op: 'write' })).toBe(0);
    await server.stop('SIGTERM');
    const after = await mappedBlocks(pool);
    expect(after.get(3)).toBe(before.get(1));
    expect(after.get(1)).toBe(before.get(1));
    await server.start();
  });

  it('a wrong export name fails clearly and leaves no device attached', async () => {
    const r = expectPass(
      await runVm({
        params: { mode: 'netlink', port: server.port },
        timeoutMs: 90_000,
        script: `
for mode in netlink ioctl; do
  extra=; [ $mode = ioctl ] && extra=-nonetlink
  if nbd-client 10.0.2.2 "$VM_port" /dev/nbd0 -N nope -b 4096 $extra > /tmp/out 2>&1; then die "nbd-client accepted a missing export"; fi
  mark "$mode.error" "$(grep -i -m1 error /tmp/out | tr ' ' _)"
  sleep 0.3
  [ "$(cat /sys/block/nbd0/size)" = 0 ] || die "nbd0 has a size"
  if nbd-client -c /dev/nbd0 >/dev/null; then die "nbd0 is connected"; fi
done
`,
      }),
    );
    expect(r.markers['netlink.error']).toMatch(/nope|not_present|unknown|Server_said/i);
    expect(r.markers['ioctl.error']).toMatch(/nope|not_present|unknown|Server_said/i);
    note(`wrong export: ${r.markers['netlink.error']}`);
  });
});
