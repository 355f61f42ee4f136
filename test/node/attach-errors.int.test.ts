// NodeStageVolume with a grant that does not work (nbdfuse path; the kernel path is covered in
// the VM suite): a clear status, no secret in the message, nothing attached or recorded. The
// driver listens on a tcp:// CSI endpoint here, as a node plugin behind a port forward would.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { type TestDriver, MiB, expectCode, grpc, mountCap, startDriver } from '../csi/helpers';

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('NodeStageVolume with a bad grant', () => {
  let t: TestDriver;

  beforeAll(async () => {
    t = await startDriver({ endpoint: `tcp://127.0.0.1:${await freePort()}` });
  });

  afterAll(() => t.close());

  function nothingLeft(): void {
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
    expect(mounts.split('\n').filter((l) => l.includes(t.dir))).toEqual([]);
    expect(fs.readdirSync(path.join(t.config.stateDir, 'staged'))).toEqual([]);
  }

  it('fails with FAILED_PRECONDITION (refused) or UNAVAILABLE (no server), never showing the secret', async () => {
    const cap = mountCap('ext4');
    const { volume } = await t.controller.call('CreateVolume', {
      name: 'pvc-bad-grant',
      volume_capabilities: [cap],
      capacity_range: { required_bytes: 64 * MiB },
    });
    const { publish_context: ctx } = await t.controller.call('ControllerPublishVolume', {
      volume_id: volume.volume_id,
      node_id: 'node-a',
      volume_capability: cap,
    });
    const secret = (ctx.export as string).split('/').pop()!;
    const stage = (publish_context: Record<string, string>) =>
      t.node.call('NodeStageVolume', {
        volume_id: volume.volume_id,
        publish_context,
        staging_target_path: path.join(t.dir, 'kubelet', 'staging', 'bad'),
        volume_capability: cap,
      });
    const cases: [Record<string, string>, grpc.status][] = [
      [{ ...ctx, export: ctx.export.replace(/[^/]+$/, 'wrong-secret') }, grpc.status.FAILED_PRECONDITION],
      [{ ...ctx, export: 'no-such-volume/x' }, grpc.status.FAILED_PRECONDITION],
      [{ ...ctx, endpoint: `127.0.0.1:${await freePort()}` }, grpc.status.UNAVAILABLE],
    ];
    for (const [context, code] of cases) {
      const err = await expectCode(stage(context), code);
      expect(err.details).toMatch(/^asking the size of export .* failed: /);
      expect(err.details).not.toContain(secret);
      expect(err.details).not.toContain('wrong-secret');
      nothingLeft();
    }
    await t.controller.call('ControllerUnpublishVolume', { volume_id: volume.volume_id, node_id: 'node-a' });
    await expectCode(stage(ctx), grpc.status.FAILED_PRECONDITION);
    nothingLeft();
  });
});
