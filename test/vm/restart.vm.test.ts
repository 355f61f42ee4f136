// Server restarts under a mounted volume: the guest writes and fsyncs files in a loop while the
// host stops `thinpool nbd serve` (SIGTERM, then SIGKILL) and starts it again on the same
// port. With nbd-client's request timeout and the nbd-reconnect helper (dead-connection
// timeout + NBD_CMD_RECONFIGURE on NBD_CMD_LINK_DEAD), I/O stalls and resumes: no I/O error
// reaches the filesystem and every file whose fsync returned is intact after a cold remount.
import path from 'node:path';
import { makeTempDir } from '../helpers/tmp';
import { ControlServer, NbdServe, VmRun, describeVm, expectPass, tail, thinpool } from './harness';
import { note } from '../helpers/notes';

jest.setTimeout(300_000);

const OUTAGE_MS = 2000;
const tmp = makeTempDir('thinpool-vm-');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Guest: attach as $VM_mode says, write + fsync files until the host says stop, verify. */
const WRITER = `
case "$VM_mode" in
  reconnect)
    nbd-client 10.0.2.2 "$VM_port" /dev/nbd0 -N vol -b 4096 -t "$VM_timeout" || die "nbd-client failed"
    wait_size nbd0
    nbd-reconnect -D 300 0 10.0.2.2 "$VM_port" vol &
    ;;
  persist)
    nbd-client 10.0.2.2 "$VM_port" /dev/nbd0 -N vol -b 4096 -t "$VM_timeout" -nonetlink -persist || die "nbd-client failed"
    wait_size nbd0
    ;;
  plain)
    nbd-client 10.0.2.2 "$VM_port" /dev/nbd0 -N vol -b 4096 -t "$VM_timeout" || die "nbd-client failed"
    wait_size nbd0
    ;;
esac
sleep 0.5
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/v && mount -t ext4 /dev/nbd0 /mnt/v
mark writing
n=0
: > /tmp/acked
while [ "$(ctl phase)" != stop ]; do
  n=$((n + 1))
  t0=$(now)
  if ! dd if=/dev/urandom of=/mnt/v/f$n bs=64k count=4 2>/tmp/dd.err; then mark ioerror "write f$n"; break; fi
  if ! sync /mnt/v/f$n; then mark ioerror "fsync f$n"; break; fi
  ( cd /mnt/v && sha256sum f$n ) >> /tmp/acked
  mark wrote "$n $(echo "$(now) $t0" | awk '{ printf "%.2f", $1 - $2 }')"
done
mark acked "$(wc -l < /tmp/acked)"
dmesg > /tmp/dmesg
grep -E 'I/O error|EXT4-fs (error|warning)|Aborting journal|Remounting filesystem read-only' /tmp/dmesg && mark fserrors yes
sync
umount /mnt/v || die "umount failed"
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 /dev/nbd0 /mnt/v || die "remount failed"
( cd /mnt/v && sha256sum -c /tmp/acked > /tmp/check 2>&1 ) || { grep -v ': OK' /tmp/check | head; die "fsynced data lost"; }
mark verified "$(grep -c ': OK' /tmp/check)"
umount /mnt/v
e2fsck -fn /dev/nbd0 > /tmp/fsck 2>&1 || { cat /tmp/fsck; die "e2fsck found problems"; }
grep -E 'I/O error|EXT4-fs (error|warning)' /tmp/dmesg && die "I/O errors reached the filesystem"
nbd-client -d /dev/nbd0 > /dev/null
wait_gone nbd0
`;

function wroteCount(console: string): number {
  return (console.match(/^VMTEST wrote /gm) ?? []).length;
}

/** Waits until the guest has completed `count` writes; returns when that was seen. */
async function waitForWrites(vm: VmRun, count: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (wroteCount(vm.console) >= count) return Date.now();
    if (/^VMTEST (ioerror|fserrors)|^VMTEST-RESULT/m.test(vm.console) || Date.now() > deadline) {
      throw new Error(
        `the guest's writes did not resume (${wroteCount(vm.console)}/${count})\n${tail(vm.console)}`,
      );
    }
    await sleep(50);
  }
}

describeVm('NBD server restarts under a mounted kernel NBD device', () => {
  afterAll(() => tmp.cleanup());

  it('SIGTERM and SIGKILL restarts stall I/O, then it resumes without errors or lost fsynced data', async () => {
    const pool = path.join(tmp.dir, 'pool');
    await thinpool(['pool', 'create', pool, '--data-size', '2G']);
    await thinpool(['thin', 'create', pool, '1', '--size', '256M']);
    const server = new NbdServe(pool, ['vol=1']);
    const ctl = new ControlServer();
    await server.start();
    await ctl.start();
    ctl.set('phase', 'run');
    const mode = process.env.THINPOOL_VM_RESTART_MODE ?? 'reconnect';
    const vm = new VmRun({
      script: WRITER,
      params: { mode, port: server.port, ctl: ctl.port, timeout: 5 },
      timeoutMs: 240_000,
    });
    const stalls: string[] = [];
    try {
      await vm.waitFor(/^VMTEST writing/m, 120_000);
      await waitForWrites(vm, 5, 60_000);
      for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
        const before = wroteCount(vm.console);
        const t0 = Date.now();
        await server.stop(signal);
        await sleep(OUTAGE_MS);
        const up = Date.now();
        await server.start();
        const resumed = await waitForWrites(vm, before + 2, 120_000);
        await waitForWrites(vm, before + 5, 60_000);
        stalls.push(
          `${signal}: server down ${up - t0} ms, writes resumed ${resumed - up} ms after the restart (stall ${resumed - t0} ms)`,
        );
      }
      ctl.set('phase', 'stop');
      const r = expectPass(await vm.result);
      const latencies = (r.all.wrote ?? []).map((l) => Number(l.split(' ')[1]));
      const reconnects = r.console.match(/^nbd-reconnect: .*reconnected.*$/gm) ?? [];
      note(
        [
          `mode ${mode}: ${r.markers.acked} files fsynced and verified after a cold remount`,
          ...stalls,
          `longest write+fsync in the guest: ${Math.max(...latencies).toFixed(2)} s`,
          ...reconnects,
        ].join('\n'),
      );
      expect(r.markers.ioerror).toBeUndefined();
      expect(r.markers.fserrors).toBeUndefined();
      expect(Number(r.markers.verified)).toBe(Number(r.markers.acked));
      expect(reconnects.length).toBeGreaterThanOrEqual(2);
    } finally {
      vm.kill();
      await ctl.stop();
      await server.stop('SIGKILL');
    }
  });
});
