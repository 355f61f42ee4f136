// `thinpool csi <method> <json>`: the README's way to talk to a running driver.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { CLI, thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';

const tmp = makeTempDir();
let driver: ChildProcess | undefined;
afterAll(async () => {
  driver?.kill('SIGTERM');
  if (driver) await new Promise((r) => driver!.once('exit', r));
  tmp.cleanup();
});

it('calls unary and streaming RPCs of a running driver and reports errors clearly', async () => {
  const endpoint = path.join(tmp.dir, 'csi.sock');
  driver = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      '--role',
      'controller',
      '--pool-dir',
      path.join(tmp.dir, 'pool'),
      '--pool-size',
      '1G',
      '--endpoint',
      endpoint,
      '--nbd-port',
      '0',
    ],
    { stdio: 'ignore' },
  );
  const csi = (method: string, request?: object) =>
    thinpool(['csi', method, ...(request ? [JSON.stringify(request)] : []), '--endpoint', endpoint]);

  // Probe until the pool is open.
  for (let i = 0; i < 100; i++) {
    const probe = await csi('Probe');
    if (probe.code === 0 && JSON.parse(probe.stdout).ready?.value) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const info = JSON.parse((await csi('GetPluginInfo')).stdout);
  expect(info.name).toBe('thinpool.csi.dev');

  const created = await csi('CreateVolume', {
    name: 'pvc-readme',
    capacity_range: { required_bytes: 64 * 2 ** 20 },
    volume_capabilities: [{ block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } }],
  });
  expect(created.code).toBe(0);
  const volume = JSON.parse(created.stdout).volume;
  expect(volume.capacity_bytes).toBe(64 * 2 ** 20);

  const snap = JSON.parse(
    (await csi('CreateSnapshot', { name: 'snap-readme', source_volume_id: volume.volume_id })).stdout,
  ).snapshot;
  expect(snap.ready_to_use).toBe(true);

  const allocated = await csi('GetMetadataAllocated', { snapshot_id: snap.snapshot_id, max_results: 10 });
  expect(allocated.code).toBe(0);
  const messages = allocated.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(messages[0].volume_capacity_bytes).toBe(64 * 2 ** 20);

  const missing = await csi('DeleteVolume', {});
  expect(missing.code).toBe(1);
  expect(missing.stderr).toMatch(/DeleteVolume failed: INVALID_ARGUMENT/);
  const unknown = await csi('MakeCoffee');
  expect(unknown.stderr).toMatch(/no CSI method "MakeCoffee"/);
});
