// The node plugin's kernel path for real: `thinpool serve --role node` runs inside the VM (Node.js
// and the built project ride in an extra cpio), the controller with the pool's NBD server runs on
// the host, and the test drives both over CSI gRPC, the guest's endpoint through a hostfwd port.
// NodeStageVolume attaches with nbd-client (netlink) and starts nbd-reconnect; the checks cover
// data (checksums), leftovers (mounts, nbd devices, helpers, loops, state) and errors.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Client, MiB, blockCap, connect, grpc, mountCap } from '../csi/helpers';
import { makeTempDir } from '../helpers/tmp';
import {
  ControlServer,
  ControllerProcess,
  GuestShell,
  VmRun,
  appImage,
  describeVm,
  expectPass,
  freePort,
  tail,
} from './harness';
import { note } from '../helpers/notes';

jest.setTimeout(900_000);

// Guest paths stay in the guest script: $KUBELET and $STATE (node-plugin.sh), $SCRATCH for files.
let KUBELET = '';
const OUTAGE_MS = 2000;
const SCRIPT = fs.readFileSync(path.join(__dirname, 'guest/node-plugin.sh'), 'utf8');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Context = Record<string, string>;

describeVm('node plugin in the VM (kernel NBD client) against the host controller', () => {
  const tmp = makeTempDir('thinpool-vm-node-');
  const ctl = new ControlServer();
  const controllerProcess = new ControllerProcess(tmp.dir);
  let vm: VmRun;
  let sh: GuestShell;
  let node: Client;
  let controller: Client;
  let pluginReadyS = 0;

  const startController = () =>
    controllerProcess.start(async () => {
      const c = connect(controllerProcess.endpoint, 'Identity');
      try {
        return (await c.call('Probe')).ready?.value === true;
      } finally {
        c.close();
      }
    });

  beforeAll(async () => {
    fs.mkdirSync(path.join(tmp.dir, 'kubelet'), { recursive: true });
    await startController();
    controller = connect(controllerProcess.endpoint, 'Controller');
    await ctl.start();
    ctl.set('phase', 'run');
    const csiPort = await freePort();
    vm = new VmRun({
      script: SCRIPT,
      images: [appImage()],
      memoryMb: 1536,
      params: { ctl: ctl.port, csiport: 10000 },
      hostfwd: [{ host: csiPort, guest: 10000 }],
      timeoutMs: 900_000,
    });
    sh = new GuestShell(vm, ctl);
    await vm.waitFor(/^VMTEST plugin-started/m, 120_000);
    const t0 = Date.now();
    node = connect(`tcp://127.0.0.1:${csiPort}`, 'Node');
    await waitForPlugin();
    KUBELET = (await sh.ok('echo "$KUBELET"')).trim();
    pluginReadyS = (Date.now() - t0) / 1000;
  });

  afterAll(async () => {
    try {
      sh?.exit();
      ctl.set('phase', 'stop');
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        vm.result,
        new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 60_000))),
      ]);
      clearTimeout(timer);
      expect(r).toBeDefined();
      expectPass(r!);
    } finally {
      node?.close();
      controller?.close();
      vm?.kill();
      await ctl.stop();
      await controllerProcess.stop('SIGKILL');
      tmp.cleanup();
    }
  });

  /** Resolves once the guest's node plugin answers NodeGetInfo. */
  async function waitForPlugin(): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      try {
        await node.call('NodeGetInfo');
        return;
      } catch (e) {
        // Under TCG a plugin start costs ~40 s when idle and more beside the guest's writer.
        if (Date.now() - t0 > 300_000) {
          const log = await sh.ok('tail -n 40 /tmp/node.log').catch((l: unknown) => String(l));
          throw new Error(`the node plugin did not answer in 300 s: ${String(e)}\n${log}`);
        }
        await sleep(500);
      }
    }
  }

  async function createAndPublish(name: string, bytes: number, cap: object): Promise<[string, Context]> {
    const { volume } = await controller.call('CreateVolume', {
      name,
      volume_capabilities: [cap],
      capacity_range: { required_bytes: bytes },
    });
    const { publish_context } = await controller.call('ControllerPublishVolume', {
      volume_id: volume.volume_id,
      node_id: 'vm',
      volume_capability: cap,
    });
    return [volume.volume_id as string, publish_context as Context];
  }

  /** ControllerExpandVolume, then NodeExpandVolume on the guest. */
  async function expand(
    vol: string,
    cap: object,
    bytes: number,
    target: string,
    staging: string,
  ): Promise<void> {
    const capacity_range = { required_bytes: bytes };
    await controller.call('ControllerExpandVolume', {
      volume_id: vol,
      capacity_range,
      volume_capability: cap,
    });
    const grown = await node.call('NodeExpandVolume', {
      volume_id: vol,
      volume_path: target,
      staging_target_path: staging,
      capacity_range,
      volume_capability: cap,
    });
    expect(grown.capacity_bytes).toBe(bytes);
  }

  /** NodeUnpublishVolume + NodeUnstageVolume. */
  async function unmount(vol: string, target: string, staging: string): Promise<void> {
    await node.call('NodeUnpublishVolume', { volume_id: vol, target_path: target });
    await node.call('NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
  }

  /** Stage and publish again with the guest's page cache dropped, so reads reach the pool. */
  async function mountCold(stage: Record<string, unknown>, publish: Record<string, unknown>): Promise<void> {
    await node.call('NodeStageVolume', stage);
    await node.call('NodePublishVolume', publish);
    await sh.ok('echo 3 > /proc/sys/vm/drop_caches');
  }

  async function expectNoLeftovers(): Promise<void> {
    expect((await sh.ok('leftovers')).trim()).toBe('');
  }

  /** The /dev/nbdN mounted at a guest path. */
  async function deviceAt(mountPoint: string): Promise<string> {
    const dev = (await sh.ok(`grep " ${mountPoint} " /proc/mounts | cut -d' ' -f1`)).trim();
    expect(dev).toMatch(/^\/dev\/nbd\d+$/);
    return dev;
  }

  it.each(['ext4', 'xfs'])(
    'stages %s through nbd-client + nbd-reconnect, publishes, expands online, and leaves nothing on unstage',
    async (fsType) => {
      const cap = mountCap(fsType);
      const [vol, ctx] = await createAndPublish(`pvc-${fsType}`, 320 * MiB, cap);
      expect(ctx.endpoint).toMatch(/^10\.0\.2\.2:\d+$/);
      const staging = `${KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.dev/${fsType}/globalmount`;
      const target = `${KUBELET}/pods/p1/volumes/kubernetes.io~csi/pvc-${fsType}/mount`;
      const stage = {
        volume_id: vol,
        publish_context: ctx,
        staging_target_path: staging,
        volume_capability: cap,
      };
      const publish = { ...stage, target_path: target, readonly: false };
      const t0 = Date.now();
      await node.call('NodeStageVolume', stage);
      const stageMs = Date.now() - t0;
      await node.call('NodeStageVolume', stage); // idempotent
      const dev = await deviceAt(staging);
      // The reconnection helper watches the device.
      expect(await sh.ok('leftovers')).toMatch(/^helper \d+$/m);
      await node.call('NodePublishVolume', publish);
      await node.call('NodePublishVolume', publish);
      await sh.ok(`write_tree ${target} $SCRATCH/fs.sums`);
      const stats = await node.call('NodeGetVolumeStats', { volume_id: vol, volume_path: target });
      expect(stats.usage[0].used).toBeGreaterThan(16 * MiB);

      // Online expansion: the controller grows the volume, the node grows the device (netlink
      // NBD_CMD_RECONFIGURE through nbd-reconnect -s) and then ext4.
      await expand(vol, cap, 512 * MiB, target, staging);
      expect(Number(await sh.ok(`blockdev --getsize64 ${dev}`))).toBe(512 * MiB);
      const after = await node.call('NodeGetVolumeStats', { volume_id: vol, volume_path: target });
      expect(after.usage[0].total).toBeGreaterThan(400 * MiB);
      expect(await sh.ok(`check_tree ${target} $SCRATCH/fs.sums`)).toMatch(/^10 files intact$/m);

      for (let i = 0; i < 2; i++) await unmount(vol, target, staging);
      await expectNoLeftovers();

      // A fresh attach (nothing cached) still has the tree and the grown filesystem.
      await mountCold(stage, publish);
      expect(await sh.ok(`check_tree ${target} $SCRATCH/fs.sums`)).toMatch(/^10 files intact$/m);
      const again = await node.call('NodeGetVolumeStats', { volume_id: vol, volume_path: target });
      expect(again.usage[0].total).toBeGreaterThan(400 * MiB);
      await unmount(vol, target, staging);
      await sh.ok(`fsck_export ${fsType} ${ctx.endpoint} ${ctx.export}`);
      await expectNoLeftovers();
      await controller.call('ControllerUnpublishVolume', { volume_id: vol, node_id: 'vm' });
      note(
        `${fsType}: node plugin answered ${pluginReadyS.toFixed(1)} s after start; first NodeStageVolume (mkfs) ${stageMs} ms`,
      );
    },
  );

  it('stages a raw block volume, publishes the device, grows it, and the data reaches the pool', async () => {
    const cap = blockCap();
    const [vol, ctx] = await createAndPublish('pvc-blk', 64 * MiB, cap);
    const staging = `${KUBELET}/plugins/kubernetes.io/csi/volumeDevices/staging/pvc-blk`;
    const target = `${KUBELET}/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-blk/pod1`;
    const stage = {
      volume_id: vol,
      publish_context: ctx,
      staging_target_path: staging,
      volume_capability: cap,
    };
    await node.call('NodeStageVolume', stage);
    await node.call('NodePublishVolume', { ...stage, target_path: target, readonly: false });
    const sum = (
      await sh.ok(
        `dd if=/dev/urandom of=$SCRATCH/blk bs=1M count=8 2>/dev/null && ` +
          `dd if=$SCRATCH/blk of=${target} bs=1M oflag=direct conv=fsync 2>/dev/null && sha256sum < $SCRATCH/blk`,
      )
    ).split(' ')[0];
    expect(Number(await sh.ok(`blockdev --getsize64 ${target}`))).toBe(64 * MiB);
    await expand(vol, cap, 128 * MiB, target, staging);
    expect(Number(await sh.ok(`blockdev --getsize64 ${target}`))).toBe(128 * MiB);
    await unmount(vol, target, staging);
    await expectNoLeftovers();

    // Read the volume on the host through the same grant: the guest's bytes are in the pool.
    const image = path.join(tmp.dir, 'blk.raw');
    const port = ctx.endpoint.split(':')[1];
    const uri = `nbd://127.0.0.1:${port}/${ctx.export.split('/').map(encodeURIComponent).join('/')}`;
    execFileSync('nbdcopy', [uri, image]);
    expect(fs.statSync(image).size).toBe(128 * MiB);
    const head = fs.readFileSync(image).subarray(0, 8 * MiB);
    expect(createHash('sha256').update(head).digest('hex')).toBe(sum);
    await controller.call('ControllerUnpublishVolume', { volume_id: vol, node_id: 'vm' });
  });

  it('fails NodeStageVolume clearly for a wrong secret, a missing export, a revoked grant and an absent server', async () => {
    const cap = mountCap('ext4');
    const [vol, ctx] = await createAndPublish('pvc-err', 64 * MiB, cap);
    const secret = ctx.export.split('/').pop()!;
    const staging = `${KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.dev/err/globalmount`;
    const attempt = async (publish_context: Context, code: grpc.status, message: RegExp) => {
      const err = (await node
        .call('NodeStageVolume', {
          volume_id: vol,
          publish_context,
          staging_target_path: staging,
          volume_capability: cap,
        })
        .then(
          () => undefined,
          (e: grpc.ServiceError) => e,
        )) as grpc.ServiceError | undefined;
      expect(err).toBeDefined();
      expect({ code: grpc.status[err!.code], details: err!.details }).toEqual({
        code: grpc.status[code],
        details: expect.stringMatching(message),
      });
      expect(err!.details).not.toContain(secret);
      await expectNoLeftovers();
      return err!.details;
    };
    const wrongSecret = { ...ctx, export: ctx.export.replace(/[^/]+$/, 'not-the-secret') };
    const messages = [
      await attempt(wrongSecret, grpc.status.FAILED_PRECONDITION, /access denied/i),
      await attempt(
        { ...ctx, export: 'no-such-volume/abc' },
        grpc.status.FAILED_PRECONDITION,
        /no such export|access denied/i,
      ),
    ];
    expect(messages[0]).not.toContain('not-the-secret');
    await controller.call('ControllerUnpublishVolume', { volume_id: vol, node_id: 'vm' });
    messages.push(await attempt(ctx, grpc.status.FAILED_PRECONDITION, /no such export|access denied/i));
    messages.push(await attempt({ ...ctx, endpoint: '10.0.2.2:1' }, grpc.status.UNAVAILABLE, /refused/i));
    note(`NodeStageVolume errors:\n${messages.join('\n')}`);
  });

  it('keeps a staged volume working across SIGTERM and SIGKILL restarts of the controller and its NBD server', async () => {
    const cap = mountCap('ext4');
    const [vol, ctx] = await createAndPublish('pvc-restart', 256 * MiB, cap);
    const staging = `${KUBELET}/plugins/kubernetes.io/csi/thinpool.csi.dev/restart/globalmount`;
    const target = `${KUBELET}/pods/p2/volumes/kubernetes.io~csi/pvc-restart/mount`;
    const stage = {
      volume_id: vol,
      publish_context: ctx,
      staging_target_path: staging,
      volume_capability: cap,
    };
    const publish = { ...stage, target_path: target, readonly: false };
    await node.call('NodeStageVolume', stage);
    await node.call('NodePublishVolume', publish);
    const writes = () => (vm.console.match(/^VMTEST wrote /gm) ?? []).length;
    const waitForWrites = async (count: number, timeoutMs: number): Promise<number> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (writes() >= count) return Date.now();
        if (/^VMTEST (ioerror|writer-done)/m.test(vm.console) || Date.now() > deadline)
          throw new Error(`the guest's writes did not resume (${writes()}/${count})\n${tail(vm.console)}`);
        await sleep(50);
      }
    };
    await sh.ok(`start_writer ${target}`);
    await waitForWrites(5, 60_000);
    // A restart of the node plugin's container takes its helpers along; the new plugin starts
    // them again for the volumes it has staged, and I/O goes on meanwhile.
    const helperPid = async () => /^helper (\d+)$/m.exec(await sh.ok('leftovers'))?.[1];
    const helperBefore = await helperPid();
    const restartWrites = writes();
    await sh.ok('restart_plugin');
    await waitForPlugin();
    const helperAfter = await helperPid();
    expect(helperBefore).toBeDefined();
    expect(helperAfter).toBeDefined();
    expect(helperAfter).not.toBe(helperBefore);
    await waitForWrites(restartWrites + 2, 60_000);
    const stalls: string[] = [];
    // Writes are counted from when the server is gone: later ones went through a new connection.
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      const t0 = Date.now();
      await controllerProcess.stop(signal);
      const before = writes();
      await sleep(OUTAGE_MS);
      const up = Date.now();
      await startController();
      const ready = Date.now();
      const resumed = await waitForWrites(before + 3, 120_000);
      await waitForWrites(before + 6, 60_000);
      stalls.push(
        `${signal}: controller down ${up - t0} ms, ready again after ${ready - up} ms, ` +
          `writes resumed ${resumed - up} ms after the restart (stall ${resumed - t0} ms)`,
      );
    }
    // The worst order: the node plugin (with its helpers) is down while the controller restarts,
    // so nobody sees the link die. The new plugin's helper offers a fresh connection at start.
    {
      await sh.ok('kill_plugin');
      const t0 = Date.now();
      await controllerProcess.stop('SIGKILL');
      const resumedWrites = waitForWrites(writes() + 3, 180_000);
      resumedWrites.catch(() => undefined); // awaited below
      await sleep(OUTAGE_MS);
      await startController();
      const up = Date.now();
      await sh.ok('start_plugin');
      await waitForPlugin();
      const answered = Date.now();
      const resumed = await resumedWrites;
      await waitForWrites(writes() + 3, 60_000);
      stalls.push(
        `SIGKILL while the node plugin was down: controller back after ${up - t0} ms, node plugin ` +
          `answering after ${answered - t0} ms (its start under TCG), writes resumed after ${resumed - t0} ms`,
      );
    }
    ctl.set('phase', 'stop');
    const done = await vm.waitFor(/^VMTEST writer-done (\d+)$/m, 60_000);
    expect(vm.console).not.toMatch(/^VMTEST ioerror/m);
    const dmesg = await sh.run(`dmesg | grep -E 'I/O error|EXT4-fs (error|warning)|Aborting journal'`);
    expect(dmesg.output).toBe('');
    // The helper's log lives in the volume's work directory until the unstage.
    const helperLog = await sh.ok('find "$STATE" -name nbd-reconnect.log -exec cat {} +');
    const reconnected = helperLog.match(/(reconnected|offered) .*$/gm) ?? [];
    // Cold: unstage (detach), stage again, drop caches, then every fsynced file must be intact.
    await unmount(vol, target, staging);
    await expectNoLeftovers();
    await mountCold(stage, publish);
    // Only the lines of files that fail come back, so a loss shows which ones (busybox sha256sum).
    const verified = await sh.run(
      `cd ${target} && { sha256sum -c $SCRATCH/acked > $SCRATCH/checked 2>&1; s=$?; grep -v ': OK$' $SCRATCH/checked; exit $s; }`,
    );
    expect(verified).toEqual({ status: 0, output: '' });
    expect(Number((await sh.ok('wc -l < $SCRATCH/acked')).trim())).toBe(Number(done[1]));
    await unmount(vol, target, staging);
    await sh.ok(`fsck_export ext4 ${ctx.endpoint} ${ctx.export}`);
    await expectNoLeftovers();
    note(
      [`${done[1]} files fsynced and verified after a cold re-stage`, ...stalls, ...reconnected].join('\n'),
    );
    expect(reconnected.filter((l) => l.startsWith('reconnected')).length).toBeGreaterThanOrEqual(2);
    expect(reconnected.filter((l) => l.startsWith('offered')).length).toBeGreaterThanOrEqual(2);
  });
});
