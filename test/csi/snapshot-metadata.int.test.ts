// SnapshotMetadata through gRPC: allocated and delta ranges match the engine and the bytes,
// and the stream honours starting_offset, max_results and the ordering rules.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { runTool, thinTool } from '../helpers/tools';
import { MiB, type TestDriver, expectCode, grpc, mountCap, startDriver } from './helpers';

const { status } = grpc;
type Range = { byte_offset: number; size_bytes: number };

function flatten(messages: { block_metadata: Range[] }[]): Range[] {
  return messages.flatMap((m) => m.block_metadata);
}

function checkStream(
  messages: { block_metadata_type: string; volume_capacity_bytes: number; block_metadata: Range[] }[],
  max: number,
  from = 0,
): void {
  const ranges = flatten(messages);
  for (const m of messages) {
    expect(m.block_metadata.length).toBeLessThanOrEqual(max);
    expect(m.volume_capacity_bytes).toBe(messages[0].volume_capacity_bytes);
    expect(m.block_metadata_type).toBe(messages[0].block_metadata_type);
  }
  for (let i = 1; i < ranges.length; i++)
    expect(ranges[i - 1].byte_offset + ranges[i - 1].size_bytes).toBeLessThanOrEqual(ranges[i].byte_offset);
  if (ranges.length) expect(ranges[0].byte_offset + ranges[0].size_bytes).toBeGreaterThan(from);
}

describe('SnapshotMetadata', () => {
  let t: TestDriver;
  let s1: string;
  let s2: string;
  let other: string;
  const block = 64 * 1024;

  beforeAll(async () => {
    t = await startDriver();
    const { volume } = await t.controller.call('CreateVolume', {
      name: 'cbt',
      volume_capabilities: [mountCap()],
      capacity_range: { required_bytes: 16 * MiB },
    });
    const dev = t.driver.pool!.device(Number(volume.volume_id.split(':')[1]));
    for (const b of [0, 1, 2, 10, 40, 41, 100, 255]) await dev.write(b * block, randomBytes(block));
    s1 = (await t.controller.call('CreateSnapshot', { source_volume_id: volume.volume_id, name: 's1' }))
      .snapshot.snapshot_id;
    for (const b of [1, 41, 42, 200]) await dev.write(b * block, randomBytes(4096));
    await dev.trim(100 * block, block);
    s2 = (await t.controller.call('CreateSnapshot', { source_volume_id: volume.volume_id, name: 's2' }))
      .snapshot.snapshot_id;
    const v2 = await t.controller.call('CreateVolume', {
      name: 'cbt2',
      volume_capabilities: [mountCap()],
      capacity_range: { required_bytes: 16 * MiB },
    });
    other = (await t.controller.call('CreateSnapshot', { source_volume_id: v2.volume.volume_id, name: 'o' }))
      .snapshot.snapshot_id;
  });
  afterAll(async () => {
    await t.close();
  });

  it('streams allocated ranges equal to the engine, in pages', async () => {
    const msgs = await t.metadata.stream('GetMetadataAllocated', {
      snapshot_id: s1,
      starting_offset: 0,
      max_results: 2,
    });
    checkStream(msgs, 2);
    expect(msgs[0].volume_capacity_bytes).toBe(16 * MiB);
    expect(msgs[0].block_metadata_type).toBe('VARIABLE_LENGTH');
    expect(flatten(msgs)).toEqual([
      { byte_offset: 0, size_bytes: 3 * block },
      { byte_offset: 10 * block, size_bytes: block },
      { byte_offset: 40 * block, size_bytes: 2 * block },
      { byte_offset: 100 * block, size_bytes: block },
      { byte_offset: 255 * block, size_bytes: block },
    ]);
    // Resume mid-way: nothing that ends at or before the offset.
    const resumed = flatten(
      await t.metadata.stream('GetMetadataAllocated', {
        snapshot_id: s1,
        starting_offset: 41 * block,
        max_results: 0,
      }),
    );
    expect(resumed[0]).toEqual({ byte_offset: 40 * block, size_bytes: 2 * block });
    expect(resumed).toHaveLength(3);
    expect(t.driver.pool!.status().heldMetadataRoot).toBeNull();
  });

  it('streams the delta: exactly the blocks whose bytes differ', async () => {
    const msgs = await t.metadata.stream('GetMetadataDelta', {
      base_snapshot_id: s1,
      target_snapshot_id: s2,
      starting_offset: 0,
      max_results: 1,
    });
    checkStream(msgs, 1);
    const ranges = flatten(msgs);
    expect(ranges).toEqual([
      { byte_offset: 1 * block, size_bytes: block },
      { byte_offset: 41 * block, size_bytes: 2 * block },
      { byte_offset: 100 * block, size_bytes: block },
      { byte_offset: 200 * block, size_bytes: block },
    ]);
    // Cross-check with the bytes of both snapshots.
    const pool = t.driver.pool!;
    const a = pool.device(Number(s1.split(':')[1]), { readOnly: true });
    const b = pool.device(Number(s2.split(':')[1]), { readOnly: true });
    const differs: number[] = [];
    for (let i = 0; i < 256; i++)
      if (!(await a.read(i * block, block)).equals(await b.read(i * block, block))) differs.push(i);
    const fromRanges = ranges.flatMap((r) =>
      Array.from({ length: r.size_bytes / block }, (_, k) => r.byte_offset / block + k),
    );
    expect(fromRanges).toEqual(differs);
    expect(t.driver.pool!.status().heldMetadataRoot).toBeNull();
  });

  it('gives the same delta and allocation as thin_delta and thin_dump on a metadata snapshot', async () => {
    const pool = t.driver.pool!;
    const ids = [s1, s2].map((id) => Number(id.split(':')[1]));
    const delta = flatten(
      await t.metadata.stream('GetMetadataDelta', { base_snapshot_id: s1, target_snapshot_id: s2 }),
    );
    const allocated = flatten(await t.metadata.stream('GetMetadataAllocated', { snapshot_id: s2 }));
    const metadata = path.join(pool.dir, 'metadata');
    // The tools read the committed metadata through the held snapshot while the driver runs.
    await pool.withMetadataSnap(async () => {
      const r = await runTool(thinTool('thin_delta', '0.9'), [
        '-m',
        '--thin1',
        String(ids[0]),
        '--thin2',
        String(ids[1]),
        metadata,
      ]);
      expect(r.code).toBe(0);
      const fromTool: Range[] = [];
      for (const m of r.stdout.matchAll(
        /<(different|left_only|right_only) begin="(\d+)" length="(\d+)"\/>/g,
      )) {
        const [begin, length] = [Number(m[2]) * block, Number(m[3]) * block];
        const last = fromTool[fromTool.length - 1];
        if (last && last.byte_offset + last.size_bytes === begin) last.size_bytes += length;
        else fromTool.push({ byte_offset: begin, size_bytes: length });
      }
      expect(delta).toEqual(fromTool);
      const dump = (await runTool(thinTool('thin_dump', '0.9'), ['-m', metadata])).stdout;
      const device = dump.slice(dump.indexOf(`dev_id="${ids[1]}"`));
      const mapped: Range[] = [];
      for (const [element] of device
        .slice(0, device.indexOf('</device>'))
        .matchAll(/<(?:range|single)_mapping [^>]*\/>/g)) {
        const begin = Number(/origin_(?:begin|block)="(\d+)"/.exec(element)![1]) * block;
        const length = Number(/length="(\d+)"/.exec(element)?.[1] ?? 1) * block;
        const last = mapped[mapped.length - 1];
        if (last && last.byte_offset + last.size_bytes === begin) last.size_bytes += length;
        else mapped.push({ byte_offset: begin, size_bytes: length });
      }
      expect(allocated).toEqual(mapped);
    });
    expect(delta.length).toBeGreaterThan(0);
  });

  it('runs concurrent requests one metadata snapshot at a time', async () => {
    const all = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        i % 2
          ? t.metadata.stream('GetMetadataDelta', { base_snapshot_id: s1, target_snapshot_id: s2 })
          : t.metadata.stream('GetMetadataAllocated', { snapshot_id: s2 }),
      ),
    );
    expect(all.every((m) => m.length > 0)).toBe(true);
    expect(t.driver.pool!.status().heldMetadataRoot).toBeNull();
  });

  it('returns the CSI error codes', async () => {
    const missing = 'default:99:00000000-0000-0000-0000-000000000000';
    await expectCode(t.metadata.stream('GetMetadataAllocated', { snapshot_id: missing }), status.NOT_FOUND);
    await expectCode(t.metadata.stream('GetMetadataAllocated', { snapshot_id: '' }), status.INVALID_ARGUMENT);
    await expectCode(
      t.metadata.stream('GetMetadataAllocated', { snapshot_id: s1, starting_offset: 16 * MiB }),
      status.OUT_OF_RANGE,
    );
    await expectCode(
      t.metadata.stream('GetMetadataAllocated', { snapshot_id: s1, starting_offset: -1 }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.metadata.stream('GetMetadataDelta', { base_snapshot_id: s1, target_snapshot_id: missing }),
      status.NOT_FOUND,
    );
    await expectCode(
      t.metadata.stream('GetMetadataDelta', { base_snapshot_id: other, target_snapshot_id: s2 }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.metadata.stream('GetMetadataDelta', {
        base_snapshot_id: s1,
        target_snapshot_id: s2,
        starting_offset: 99 * MiB,
      }),
      status.OUT_OF_RANGE,
    );
  });

  it('splits into fixed-length blocks when configured', async () => {
    const { toByteRanges } = await import('../../src/csi/snapshot-metadata');
    expect(toByteRanges([{ begin: 2, length: 3 }], block, 16 * MiB, 3 * block + 1, true)).toEqual([
      { byte_offset: 3 * block, size_bytes: block },
      { byte_offset: 4 * block, size_bytes: block },
    ]);
  });
});
