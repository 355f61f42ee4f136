// The whole life of a volume as Kubernetes drives it, through gRPC on the driver's unix socket
// and real host tools: create → publish → stage (nbdfuse + loop, mkfs, mount) → publish into a
// target → write → snapshot → restore and clone → expand online → tear everything down, and
// then no mount, loop device, nbdfuse process or export may be left behind.
// Needs root, /dev/fuse, loop devices, nbdfuse, mkfs.ext4/xfs.
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { GiB, MiB, type TestDriver, blockCap, expectCode, grpc, mountCap, startDriver } from '../csi/helpers';

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    env: { ...process.env, PATH: `/usr/sbin:/sbin:${process.env.PATH}` },
  });
}

async function syncAll(): Promise<void> {
  await new Promise<void>((resolve, reject) => execFile('sync', [], (e) => (e ? reject(e) : resolve())));
}

function leftovers(t: TestDriver): { mounts: string[]; loops: string[]; fuse: string[] } {
  const mounts = fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .filter((l) => l.includes(t.dir));
  const loops = sh('losetup', ['-n', '-O', 'NAME,BACK-FILE', '-l'])
    .split('\n')
    .filter((l) => l.includes(t.dir));
  const fuse = sh('ps', ['-eo', 'pid,args'])
    .split('\n')
    .filter((l) => l.includes('nbdfuse') && l.includes(t.dir));
  return { mounts, loops, fuse };
}

// The NBD server behind these mounts runs in this process: file I/O on them must be
// asynchronous, or a blocked event loop would wait for itself.
async function writeFiles(dir: string, count: number, tag: string): Promise<Map<string, string>> {
  const sums = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const data = randomBytes(i === 0 ? 3 * MiB + 17 : 4096 * (i + 1));
    const name = `${tag}-${i}.bin`;
    await fs.promises.writeFile(path.join(dir, name), data);
    sums.set(name, createHash('sha256').update(data).digest('hex'));
  }
  return sums;
}

async function readFiles(dir: string, names: Iterable<string>): Promise<Map<string, string>> {
  const sums = new Map<string, string>();
  for (const name of names)
    sums.set(
      name,
      createHash('sha256')
        .update(await fs.promises.readFile(path.join(dir, name)))
        .digest('hex'),
    );
  return sums;
}

describe.each(['ext4', 'xfs'])('volume lifecycle on %s (nbdfuse + loop)', (fsType) => {
  let t: TestDriver;
  const kubelet = () => path.join(t.dir, 'kubelet');

  beforeAll(async () => {
    t = await startDriver({ poolDataSizeBytes: 4 * GiB });
  });

  afterAll(async () => {
    // Best effort if a test failed half-way: unmount anything of ours, detach, stop nbdfuse.
    const left = leftovers(t);
    for (const l of left.mounts.reverse()) {
      await new Promise<void>((resolve) => execFile('umount', ['-l', l.split(' ')[1]], () => resolve()));
    }
    await t.close();
  });

  it('creates, stages, publishes, snapshots, restores, clones, expands and cleans up', async () => {
    const cap = mountCap(fsType);
    const { volume } = await t.controller.call('CreateVolume', {
      name: `pvc-${fsType}`,
      volume_capabilities: [cap],
      capacity_range: { required_bytes: 512 * MiB },
    });
    const vol = volume.volume_id as string;
    const { publish_context } = await t.controller.call('ControllerPublishVolume', {
      volume_id: vol,
      node_id: 'node-a',
      volume_capability: cap,
    });
    const staging = path.join(kubelet(), 'plugins', 'staging', 'a');
    const target = path.join(kubelet(), 'pods', 'p1', 'volumes', 'a');
    const stage = { volume_id: vol, publish_context, staging_target_path: staging, volume_capability: cap };
    await t.node.call('NodeStageVolume', stage);
    await t.node.call('NodeStageVolume', stage); // idempotent
    const pub = { ...stage, target_path: target, readonly: false };
    await t.node.call('NodePublishVolume', pub);
    await t.node.call('NodePublishVolume', pub); // idempotent
    await expectCode(
      t.node.call('NodePublishVolume', { ...pub, readonly: true }),
      grpc.status.ALREADY_EXISTS,
    );

    const before = await writeFiles(target, 5, 'before');
    await syncAll();
    const { snapshot } = await t.controller.call('CreateSnapshot', {
      source_volume_id: vol,
      name: `snap-${fsType}`,
    });
    expect(snapshot.ready_to_use).toBe(true);
    const after = await writeFiles(target, 3, 'after');

    const stats = await t.node.call('NodeGetVolumeStats', { volume_id: vol, volume_path: target });
    const bytes = stats.usage.find((u: { unit: string }) => u.unit === 'BYTES');
    expect(bytes.total).toBeGreaterThan(400 * MiB);
    expect(bytes.used).toBeGreaterThan(3 * MiB);
    expect(stats.usage.find((u: { unit: string }) => u.unit === 'INODES').used).toBeGreaterThan(0);

    // Restore the snapshot into a new, larger volume and a clone of the live volume.
    const restored = await t.controller.call('CreateVolume', {
      name: `restore-${fsType}`,
      volume_capabilities: [cap],
      capacity_range: { required_bytes: 768 * MiB },
      volume_content_source: { snapshot: { snapshot_id: snapshot.snapshot_id } },
    });
    expect(restored.volume.capacity_bytes).toBe(768 * MiB);
    await syncAll();
    const clone = await t.controller.call('CreateVolume', {
      name: `clone-${fsType}`,
      volume_capabilities: [cap],
      capacity_range: { required_bytes: 512 * MiB },
      volume_content_source: { volume: { volume_id: vol } },
    });
    const mounted: { id: string; staging: string; target: string }[] = [];
    for (const [i, v] of [restored.volume, clone.volume].entries()) {
      const ctx = await t.controller.call('ControllerPublishVolume', {
        volume_id: v.volume_id,
        node_id: 'node-a',
        volume_capability: cap,
      });
      const s = path.join(kubelet(), 'plugins', 'staging', `v${i}`);
      const tp = path.join(kubelet(), 'pods', 'p2', 'volumes', `v${i}`);
      const st = {
        volume_id: v.volume_id,
        publish_context: ctx.publish_context,
        staging_target_path: s,
        volume_capability: cap,
      };
      await t.node.call('NodeStageVolume', st);
      await t.node.call('NodePublishVolume', { ...st, target_path: tp, readonly: i === 0 });
      mounted.push({ id: v.volume_id, staging: s, target: tp });
    }
    // The restored volume has exactly the files from before the snapshot.
    expect(await readFiles(mounted[0].target, before.keys())).toEqual(before);
    await expect(fs.promises.access(path.join(mounted[0].target, 'after-0.bin'))).rejects.toThrow(/ENOENT/);
    await expect(fs.promises.writeFile(path.join(mounted[0].target, 'x'), 'x')).rejects.toThrow(
      /EROFS|read-only/,
    );
    // The clone has everything the volume had when it was cloned.
    expect(await readFiles(mounted[1].target, [...before.keys(), ...after.keys()])).toEqual(
      new Map([...before, ...after]),
    );

    // Online expansion of the original volume (ext4 needs CAP_SYS_RESOURCE to grow mounted).
    const expanded = await t.controller.call('ControllerExpandVolume', {
      volume_id: vol,
      capacity_range: { required_bytes: 1 * GiB },
      volume_capability: cap,
    });
    expect(expanded).toEqual({ capacity_bytes: GiB, node_expansion_required: true });
    const canGrowExt4Online =
      (BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]}`) >> 24n) &
      1n;
    if (fsType === 'xfs' || canGrowExt4Online) {
      const grown = await t.node.call('NodeExpandVolume', {
        volume_id: vol,
        volume_path: target,
        staging_target_path: staging,
        capacity_range: { required_bytes: GiB },
        volume_capability: cap,
      });
      expect(grown.capacity_bytes).toBe(GiB);
      const total = (await t.node.call('NodeGetVolumeStats', { volume_id: vol, volume_path: target }))
        .usage[0].total;
      expect(total).toBeGreaterThan(900 * MiB);
      expect(await readFiles(target, before.keys())).toEqual(before);
    }

    // Tear down everything, twice (idempotency).
    for (const m of mounted) {
      for (let i = 0; i < 2; i++) {
        await t.node.call('NodeUnpublishVolume', { volume_id: m.id, target_path: m.target });
        await t.node.call('NodeUnstageVolume', { volume_id: m.id, staging_target_path: m.staging });
        await t.controller.call('ControllerUnpublishVolume', { volume_id: m.id, node_id: 'node-a' });
      }
    }
    for (let i = 0; i < 2; i++) {
      await t.node.call('NodeUnpublishVolume', { volume_id: vol, target_path: target });
      await t.node.call('NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await t.controller.call('ControllerUnpublishVolume', { volume_id: vol, node_id: 'node-a' });
    }
    for (const id of [vol, ...mounted.map((m) => m.id)]) {
      await t.controller.call('DeleteVolume', { volume_id: id });
      await t.controller.call('DeleteVolume', { volume_id: id });
    }
    await t.controller.call('DeleteSnapshot', { snapshot_id: snapshot.snapshot_id });
    expect(leftovers(t)).toEqual({ mounts: [], loops: [], fuse: [] });
    expect(t.driver.nbd!.exports.list()).toEqual([]);
    expect(t.driver.nbd!.connectionCount()).toBe(0);
    expect((await t.controller.call('ListVolumes', {})).entries).toEqual([]);
    expect(t.driver.pool!.listDevices()).toEqual([]);
  });
});

describe('raw block volume and driver restart', () => {
  let t: TestDriver;
  beforeAll(async () => {
    t = await startDriver();
  });
  afterAll(async () => {
    await t.close();
  });

  it('stages a block volume, binds the device into a file, and unstages after a restart', async () => {
    const cap = blockCap();
    const { volume } = await t.controller.call('CreateVolume', {
      name: 'blk',
      volume_capabilities: [cap],
      capacity_range: { required_bytes: 64 * MiB },
    });
    const ctx = await t.controller.call('ControllerPublishVolume', {
      volume_id: volume.volume_id,
      node_id: 'node-a',
      volume_capability: cap,
    });
    const staging = path.join(t.dir, 'kubelet', 'staging', 'blk');
    const target = path.join(t.dir, 'kubelet', 'pods', 'p', 'blk');
    const st = {
      volume_id: volume.volume_id,
      publish_context: ctx.publish_context,
      staging_target_path: staging,
      volume_capability: cap,
    };
    await t.node.call('NodeStageVolume', st);
    await t.node.call('NodePublishVolume', { ...st, target_path: target, readonly: false });
    const data = randomBytes(1 * MiB);
    const fh = await fs.promises.open(target, 'r+');
    await fh.write(data, 0, data.length, 4 * MiB);
    await fh.sync();
    await fh.close();
    const stats = await t.node.call('NodeGetVolumeStats', {
      volume_id: volume.volume_id,
      volume_path: target,
    });
    expect(stats.usage[0]).toMatchObject({ unit: 'BYTES', total: 64 * MiB });
    const device = t.driver.pool!.device(Number(volume.volume_id.split(':')[1]));
    expect((await device.read(4 * MiB, MiB)).equals(data)).toBe(true);

    // A restart keeps the volume and its grant; the node can still tear down.
    await t.restart();
    const listed = await t.controller.call('ListVolumes', {});
    expect(listed.entries.map((e: { volume: { volume_id: string } }) => e.volume.volume_id)).toEqual([
      volume.volume_id,
    ]);
    expect(listed.entries[0].status.published_node_ids).toEqual(['node-a']);
    await t.node.call('NodeUnpublishVolume', { volume_id: volume.volume_id, target_path: target });
    await t.node.call('NodeUnstageVolume', { volume_id: volume.volume_id, staging_target_path: staging });
    await t.controller.call('ControllerUnpublishVolume', { volume_id: volume.volume_id, node_id: 'node-a' });
    await t.controller.call('DeleteVolume', { volume_id: volume.volume_id });
    expect(leftovers(t)).toEqual({ mounts: [], loops: [], fuse: [] });
  });
});
