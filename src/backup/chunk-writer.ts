// Stores a backup's new chunks: skips those the repository (or this run) already has, compresses
// if asked, and appends them to packs of about `packBytes`. A full pack is sealed (fdatasync,
// rename) in the background while the next one fills, so the disk writes back one pack while
// the network fills the next. `finish` seals the last pack and fsyncs packs/ once: after it,
// every chunk put is durable and a manifest may name it.
import { CODEC_IDS, type Codec, encodeChunk } from './chunk-codec';
import type { Repository } from './repository';
import { RECORD_HEADER_BYTES } from './pack';
import type { PackWriter, SealedPack } from './pack-writer';

export const DEFAULT_PACK_BYTES = 32 * 1024 * 1024;

export interface PutResult {
  /** Bytes this chunk added to the repository (0 when it was there already). */
  storedBytes: number;
  reused: boolean;
}

export class ChunkWriter {
  private current: Promise<PackWriter> | undefined;
  private readonly sealing: Promise<SealedPack>[] = [];
  /** Chunks appended by this run but not yet in a sealed pack: a second copy is not written. */
  private readonly pending = new Set<string>();
  private failure: Error | undefined;

  private constructor(
    private readonly repo: Repository,
    private readonly codec: Codec,
    private readonly packBytes: number,
  ) {}

  static async open(
    repo: Repository,
    options: { codec?: Codec; packBytes?: number } = {},
  ): Promise<ChunkWriter> {
    await repo.upgradeForWriting();
    await repo.loadIndex();
    return new ChunkWriter(repo, options.codec ?? 'none', options.packBytes ?? DEFAULT_PACK_BYTES);
  }

  /** Whether the chunk is stored already (or on its way in this run). */
  async has(hash: string): Promise<boolean> {
    return this.pending.has(hash) || (await this.repo.hasChunk(hash));
  }

  /** Stores `data` under `hash` unless it is there; `data` may be reused once this resolves. */
  async put(hash: string, data: Buffer): Promise<PutResult> {
    if (this.failure) throw this.failure;
    if (await this.has(hash)) return { storedBytes: 0, reused: true };
    this.pending.add(hash);
    const { payload, codec } = await encodeChunk(data, this.codec);
    // Another put may have sealed the pack while this one waited for it: take the open one.
    let pack: PackWriter;
    for (;;) {
      const open = (this.current ??= this.repo.newPack());
      pack = await open;
      if (this.current === open) break;
    }
    const written = pack.append(hash, CODEC_IDS[codec], payload, data.length);
    // Positions are handed out at once: a pack past its size is sealed after this record.
    if (pack.bytes >= this.packBytes) {
      this.current = undefined;
      this.startSeal(pack);
    }
    await written;
    return { storedBytes: RECORD_HEADER_BYTES + payload.length, reused: false };
  }

  /**
   * Seals in the background. A failure (a full disk) is kept and fails the next put and
   * `finish`, rather than surfacing as an unhandled rejection while reads go on.
   */
  private startSeal(pack: PackWriter): void {
    const sealing = this.seal(pack);
    sealing.catch((e: Error) => (this.failure ??= e));
    this.sealing.push(sealing);
  }

  private async seal(pack: PackWriter): Promise<SealedPack> {
    const sealed = await pack.seal();
    this.repo.addPack(sealed);
    for (const e of sealed.entries) this.pending.delete(e.hash);
    return sealed;
  }

  /** Seals what is left and makes every pack durable in packs/. */
  async finish(): Promise<{ packs: number }> {
    if (this.current) {
      const last = await this.current;
      this.current = undefined;
      this.startSeal(last);
    }
    const results = await Promise.allSettled(this.sealing);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    if (results.length) await this.repo.syncPacksDir();
    return { packs: results.length };
  }

  /** After a failure: waits for writes in flight and drops the unsealed pack from tmp/. */
  async abort(): Promise<void> {
    const last = this.current;
    this.current = undefined;
    await Promise.allSettled(this.sealing);
    if (last) await (await last).abort().catch(() => undefined);
  }
}
