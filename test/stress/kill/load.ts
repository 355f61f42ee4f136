// The mixed load on one life of the driver: an NBD connection per published volume with several
// requests in flight (writes, FUA writes, trims, zeroes, flushes, verifying reads) and one CSI
// caller changing the device set and the catalogue, until the kill plan fires a SIGKILL.
import * as grpc from '@grpc/grpc-js';
import { NbdClient, parseNbdEndpoint } from '../../../src/nbd/client';
import { type Change, Content, SECTOR, fillPattern } from './content';
import { BLOCK_CAPABILITY, type CsiCalls } from './csi';
import type { DeviceObject, Model } from './model';
import { NODE_ID } from './server';
import { Stats } from './stats';
import type { Random } from '../../helpers/random';

export const VOLUME_BYTES = 4 * 2 ** 20;
const MAX_VOLUME_BYTES = 8 * 2 ** 20;
const BLOCK = 64 * 1024;
const QUEUE_DEPTH = 4;

/** When to kill: after a time, or a moment after the nth CSI call / flush / write is sent. */
export interface KillPlan {
  mode: 'timer' | 'csi' | 'flush' | 'write';
  nth: number;
  delayMs: number;
  /** Kill by this time whatever happened. */
  maxMs: number;
}

export function drawKillPlan(rnd: Random): KillPlan {
  const r = rnd.next();
  const maxMs = 200 + rnd.int(1800);
  if (r < 0.35) return { mode: 'timer', nth: 0, delayMs: 0, maxMs };
  if (r < 0.65) return { mode: 'csi', nth: 1 + rnd.int(3), delayMs: rnd.int(12), maxMs: 2500 };
  if (r < 0.85) return { mode: 'flush', nth: 1 + rnd.int(15), delayMs: rnd.int(4), maxMs: 2500 };
  return { mode: 'write', nth: 1 + rnd.int(400), delayMs: rnd.int(2), maxMs: 2500 };
}

/** Thrown through an actor when the server is gone: it stops without counting a failure. */
class Killed extends Error {}

interface Io extends Change {
  kind: 'write' | 'trim' | 'zero' | 'read';
}

interface Connection {
  client: NbdClient;
  inflight: Set<Io>;
  retiring: boolean;
  loop: Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Load {
  killing = false;
  failure: string | undefined;
  private readonly connections = new Map<DeviceObject, Connection>();
  private csiInFlight: string | undefined;
  private flushesInFlight = 0;
  private sent = { csi: 0, flush: 0, write: 0 };
  private plan: KillPlan | undefined;
  private killTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly model: Model,
    private readonly csi: CsiCalls,
    private readonly rnd: Random,
    private readonly stats: Stats,
    private readonly counters: { acks: number; tags: number },
    private readonly kill: () => void,
  ) {}

  // ---- after a restart: what a CO does ----

  /** Retries every call a kill cut short, as the CO would, so each object has one state again. */
  async retryCutShort(serverSideOnly: boolean): Promise<void> {
    for (const obj of [...this.model.objects]) {
      if (obj.state === 'creating') {
        const known = obj.csiId;
        const id = await this.create(obj);
        if (known && id !== known)
          this.fail(`retried create of ${obj.name} made ${id}, not the existing ${known}`);
        // Without the reopened pool's word, a retried snapshot may be new: its content is open.
        if (obj.kind === 'snapshot' && serverSideOnly) obj.content.unknown.fill(1);
      } else if (obj.state === 'deleting') {
        await this.remove(obj);
      }
      if (obj.state === 'live' && obj.growingTo) await this.expand(obj, obj.growingTo);
    }
  }

  /** ListVolumes and ListSnapshots must name exactly the live objects. */
  async checkLists(): Promise<void> {
    const volumes = await this.list<{ volume: { volume_id: string; capacity_bytes: number } }>('ListVolumes');
    const snapshots = await this.list<{ snapshot: { snapshot_id: string; source_volume_id: string } }>(
      'ListSnapshots',
    );
    const want = (kind: 'volume' | 'snapshot') =>
      this.model
        .live(kind)
        .map((o) => o.csiId!)
        .sort();
    const gotVolumes = volumes.map((e) => e.volume.volume_id).sort();
    const gotSnapshots = snapshots.map((e) => e.snapshot.snapshot_id).sort();
    if (JSON.stringify(gotVolumes) !== JSON.stringify(want('volume')))
      this.fail(`ListVolumes says ${gotVolumes.join(' ')}; the client was told ${want('volume').join(' ')}`);
    if (JSON.stringify(gotSnapshots) !== JSON.stringify(want('snapshot')))
      this.fail(
        `ListSnapshots says ${gotSnapshots.join(' ')}; the client was told ${want('snapshot').join(' ')}`,
      );
    for (const v of volumes) {
      const obj = this.model.live('volume').find((o) => o.csiId === v.volume.volume_id);
      if (obj && v.volume.capacity_bytes !== obj.content.sizeBytes)
        this.fail(
          `${obj.name}: ListVolumes says ${v.volume.capacity_bytes} bytes, not ${obj.content.sizeBytes}`,
        );
    }
  }

  /** Publishes and connects every live volume (ControllerPublishVolume is idempotent). */
  async connectAll(): Promise<void> {
    for (const v of this.model.live('volume')) await this.publishAndConnect(v);
  }

  /** Reads every connected volume whole over NBD and checks it (the server replayed the journal). */
  async verifyOverNbd(ackSince: number): Promise<void> {
    for (const [v, conn] of this.connections) {
      const size = conn.client.info.sizeBytes;
      const got = Buffer.alloc(size);
      for (let at = 0; at < size; at += 2 ** 20) {
        const n = Math.min(2 ** 20, size - at);
        (await conn.client.read(at, n)).data.copy(got, at);
      }
      const bad = v.content.check(got);
      if (bad) {
        // Tells a wrong large read from a wrong mapping: the same sector read on its own.
        const again = (await conn.client.read(bad.sector * SECTOR, SECTOR)).data;
        const tag = again.every((x) => x === 0) ? 'zeros' : `tag ${again.readUInt32LE(0)}`;
        this.fail(`${v.name} over NBD after restart: ${JSON.stringify(bad)}; read alone: ${tag}`);
      }
      const seen = v.content.visibleChanges(ackSince);
      this.stats.changesVerified += seen.all;
      this.stats.unflushedChangesVerified += seen.unflushed;
      this.stats.bytesVerified += size;
      v.content.adopt(got);
    }
  }

  // ---- the load ----

  async run(plan: KillPlan): Promise<void> {
    this.plan = plan;
    this.sent = { csi: 0, flush: 0, write: 0 }; // the plan counts from the start of the load
    for (const [v, conn] of this.connections) conn.loop = this.catchKilled(this.ioLoop(v, conn));
    if (plan.mode === 'timer') this.killTimer = setTimeout(() => this.triggerKill('timer'), plan.maxMs);
    else this.killTimer = setTimeout(() => this.triggerKill('fallback-timer'), plan.maxMs);
    await this.catchKilled(this.csiActor());
    await Promise.all([...this.connections.values()].map((c) => c.loop));
    clearTimeout(this.killTimer);
  }

  /** After the process is gone: requests never answered become changes cut short. */
  async collect(): Promise<void> {
    for (const [v, conn] of this.connections) {
      for (const io of conn.inflight) {
        if (io.kind === 'read') continue;
        v.content.cutShort.push(io);
        this.stats.nbdRequestsCutShort++;
      }
      conn.client.destroy();
    }
    this.connections.clear();
  }

  triggerKill(why: string): void {
    if (this.killing) return;
    this.killing = true;
    clearTimeout(this.killTimer);
    Stats.bump(this.stats.killModes, why);
    if (this.csiInFlight) Stats.bump(this.stats.killsDuringCsi, this.csiInFlight);
    if (this.flushesInFlight) this.stats.killsDuringFlush++;
    this.kill();
  }

  private fail(message: string): void {
    this.failure ??= message;
    this.triggerKill('failure');
    throw new Killed(message);
  }

  private async catchKilled(p: Promise<void>): Promise<void> {
    try {
      await p;
    } catch (e) {
      if (!(e instanceof Killed)) {
        this.failure ??= `campaign error: ${(e as Error).stack}`;
        this.triggerKill('failure');
      }
    }
  }

  private sentOne(what: 'csi' | 'flush' | 'write'): void {
    const n = ++this.sent[what];
    const plan = this.plan;
    if (plan && plan.mode === what && n === plan.nth)
      setTimeout(() => this.triggerKill(`during-${what}`), plan.delayMs);
  }

  private async call<T>(method: string, request: object): Promise<T> {
    if (this.killing) throw new Killed();
    this.csiInFlight = method;
    const reply = this.csi.call<T>(method, request);
    this.sentOne('csi');
    try {
      const r = await reply;
      Stats.bump(this.stats.csiOk, method);
      return r;
    } catch (e) {
      if (this.killing) throw new Killed();
      const err = e as grpc.ServiceError;
      this.fail(
        `${method} failed while the server was up: ${grpc.status[err.code] ?? err.code} ${err.details}`,
      );
      throw e;
    } finally {
      this.csiInFlight = undefined;
    }
  }

  private async list<T>(method: string): Promise<T[]> {
    const out: T[] = [];
    let token = '';
    do {
      const r = await this.call<{ entries: T[]; next_token: string }>(method, {
        max_entries: 3,
        starting_token: token,
        source_volume_id: '',
        snapshot_id: '',
      });
      out.push(...r.entries);
      token = r.next_token;
    } while (token);
    return out;
  }

  private async create(obj: DeviceObject): Promise<string> {
    obj.state = 'creating';
    let id: string;
    if (obj.kind === 'volume') {
      const r = await this.call<{ volume: { volume_id: string; capacity_bytes: number } }>('CreateVolume', {
        name: obj.name,
        capacity_range: { required_bytes: obj.content.sizeBytes, limit_bytes: 0 },
        volume_capabilities: [BLOCK_CAPABILITY],
        parameters: {},
        volume_content_source: obj.sourceId ? { snapshot: { snapshot_id: obj.sourceId } } : null,
      });
      id = r.volume.volume_id;
      if (r.volume.capacity_bytes !== obj.content.sizeBytes)
        this.fail(`CreateVolume ${obj.name}: ${r.volume.capacity_bytes} bytes, not ${obj.content.sizeBytes}`);
    } else {
      const r = await this.call<{
        snapshot: { snapshot_id: string; source_volume_id: string; ready_to_use: boolean };
      }>('CreateSnapshot', { source_volume_id: obj.sourceId, name: obj.name, parameters: {} });
      id = r.snapshot.snapshot_id;
      if (r.snapshot.source_volume_id !== obj.sourceId || !r.snapshot.ready_to_use)
        this.fail(`CreateSnapshot ${obj.name}: ${JSON.stringify(r.snapshot)}`);
    }
    obj.csiId = id;
    obj.state = 'live';
    return id;
  }

  private async remove(obj: DeviceObject): Promise<void> {
    obj.state = 'deleting';
    if (obj.kind === 'volume') await this.call('DeleteVolume', { volume_id: obj.csiId });
    else await this.call('DeleteSnapshot', { snapshot_id: obj.csiId });
    obj.state = 'gone';
  }

  private async expand(v: DeviceObject, sizeBytes: number): Promise<void> {
    v.growingTo = sizeBytes;
    const r = await this.call<{ capacity_bytes: number }>('ControllerExpandVolume', {
      volume_id: v.csiId,
      capacity_range: { required_bytes: sizeBytes, limit_bytes: 0 },
      volume_capability: BLOCK_CAPABILITY,
    });
    if (r.capacity_bytes !== sizeBytes)
      this.fail(`expand ${v.name}: ${r.capacity_bytes} bytes, not ${sizeBytes}`);
    v.content.grow(sizeBytes);
    v.growingTo = undefined;
  }

  private async publishAndConnect(v: DeviceObject): Promise<void> {
    v.publication = 'publishing';
    const r = await this.call<{ publish_context: Record<string, string> }>('ControllerPublishVolume', {
      volume_id: v.csiId,
      node_id: NODE_ID,
      volume_capability: BLOCK_CAPABILITY,
      readonly: false,
    });
    v.publication = 'published';
    let client: NbdClient;
    try {
      client = await NbdClient.connect(
        parseNbdEndpoint(r.publish_context.endpoint),
        r.publish_context.export,
      );
    } catch (e) {
      if (this.killing) throw new Killed();
      throw e;
    }
    if (client.info.sizeBytes !== v.content.sizeBytes)
      this.fail(`${v.name}: the export has ${client.info.sizeBytes} bytes, not ${v.content.sizeBytes}`);
    const conn: Connection = { client, inflight: new Set(), retiring: false, loop: Promise.resolve() };
    this.connections.set(v, conn);
    // Before the load runs, connections stay idle: the restart checks read them undisturbed.
    if (this.plan) conn.loop = this.catchKilled(this.ioLoop(v, conn));
  }

  /** Stops a volume's I/O, waits for it, disconnects (what a node does before unpublishing). */
  private async retire(v: DeviceObject): Promise<void> {
    const conn = this.connections.get(v);
    if (!conn) return;
    conn.retiring = true;
    await conn.loop;
    if (this.killing) throw new Killed();
    this.connections.delete(v);
    await conn.client.close();
  }

  private async unpublish(v: DeviceObject): Promise<void> {
    await this.retire(v);
    v.publication = 'unpublishing';
    await this.call('ControllerUnpublishVolume', { volume_id: v.csiId, node_id: NODE_ID });
    v.publication = 'unpublished';
  }

  private async csiActor(): Promise<void> {
    if (!this.connections.size && !this.model.live('volume').length) await this.newVolume();
    while (!this.killing) {
      await sleep(5 + this.rnd.int(120));
      if (this.killing) return;
      const volumes = this.model.live('volume');
      const snapshots = this.model.live('snapshot');
      const r = this.rnd.next();
      if (r < 0.12 && volumes.length < 5)
        await this.newVolume(snapshots.length ? this.rnd.pick(snapshots) : undefined);
      else if (r < 0.17 && volumes.length < 5) await this.newVolume();
      else if (r < 0.42 && snapshots.length < 10) await this.newSnapshot(this.rnd.pick(volumes));
      else if (r < 0.55 && snapshots.length > 2) await this.remove(this.rnd.pick(snapshots));
      else if (r < 0.63 && volumes.length > 2) {
        const v = this.rnd.pick(volumes);
        await this.unpublish(v);
        await this.remove(v);
      } else if (r < 0.75) {
        const v = this.rnd.pick(volumes);
        await this.unpublish(v);
        await this.publishAndConnect(v);
      } else if (r < 0.85) {
        const v = this.rnd.pick(volumes);
        if (v.content.sizeBytes < MAX_VOLUME_BYTES) await this.expand(v, v.content.sizeBytes + 2 ** 20);
      } else if (r < 0.92) {
        await this.call('GetCapacity', { volume_capabilities: [BLOCK_CAPABILITY], parameters: {} });
      } else await this.checkLists();
    }
  }

  private async newVolume(from?: DeviceObject): Promise<void> {
    const v = this.model.add('volume', from ? from.content.clone() : new Content(VOLUME_BYTES), from?.csiId);
    await this.create(v);
    await this.publishAndConnect(v);
  }

  private async newSnapshot(v: DeviceObject): Promise<void> {
    const content = v.content.clone();
    // What is in flight now may or may not be in the snapshot.
    for (const io of this.connections.get(v)?.inflight ?? []) content.markUnknown(io.offset, io.length);
    const s = this.model.add('snapshot', content, v.csiId);
    v.snapshotsInProgress.add(s);
    try {
      await this.create(s);
    } finally {
      v.snapshotsInProgress.delete(s);
    }
  }

  private async ioLoop(v: DeviceObject, conn: Connection): Promise<void> {
    const running = new Set<Promise<void>>();
    while (!this.killing && !conn.retiring) {
      if (running.size >= QUEUE_DEPTH) {
        await Promise.race(running);
        continue;
      }
      const p = this.catchKilled(this.oneIo(v, conn));
      running.add(p);
      void p.then(() => running.delete(p));
      if (this.rnd.next() < 0.3) await sleep(this.rnd.int(3));
    }
    await Promise.all(running);
  }

  private pickRange(conn: Connection): { offset: number; length: number } | undefined {
    const size = conn.client.info.sizeBytes;
    for (let attempt = 0; attempt < 4; attempt++) {
      let offset: number;
      let length: number;
      if (this.rnd.next() < 0.2) {
        // Whole blocks: the paths that skip zeroing and copying.
        length = BLOCK * (1 + this.rnd.int(4));
        offset = BLOCK * this.rnd.int((size - length) / BLOCK + 1);
      } else {
        length = SECTOR * (1 + this.rnd.int(this.rnd.next() < 0.8 ? 16 : 512));
        offset = SECTOR * this.rnd.int((size - length) / SECTOR + 1);
      }
      const clash = [...conn.inflight].some(
        (io) => offset < io.offset + io.length && io.offset < offset + length,
      );
      if (!clash) return { offset, length };
    }
    return undefined;
  }

  private async oneIo(v: DeviceObject, conn: Connection): Promise<void> {
    const r = this.rnd.next();
    if (r < 0.12) return this.flush(v, conn);
    const range = this.pickRange(conn);
    if (!range) return void (await sleep(1));
    const kind: Io['kind'] = r < 0.22 ? 'read' : r < 0.3 ? 'trim' : r < 0.38 ? 'zero' : 'write';
    const io: Io = { kind, ...range };
    if (kind === 'write') io.data = fillPattern(Buffer.alloc(range.length), ++this.counters.tags);
    conn.inflight.add(io);
    if (kind !== 'read') for (const s of v.snapshotsInProgress) s.content.markUnknown(io.offset, io.length);
    const fua = kind === 'write' && this.rnd.next() < 0.05;
    let got: Buffer | undefined;
    try {
      if (kind === 'write') {
        const p = conn.client.write(io.offset, io.data!, { fua });
        this.sentOne('write');
        await p;
      } else if (kind === 'trim') await conn.client.trim(io.offset, io.length);
      else if (kind === 'zero')
        await conn.client.writeZeroes(io.offset, io.length, { noHole: this.rnd.next() < 0.5 });
      else got = (await conn.client.read(io.offset, io.length)).data;
    } catch (e) {
      // Left in `inflight`: collect() turns it into a change cut short.
      if (this.killing) throw new Killed();
      this.fail(
        `${v.name}: NBD ${kind} [${io.offset}, +${io.length}) failed while the server was up: ${(e as Error).message}`,
      );
    }
    conn.inflight.delete(io);
    if (got) {
      this.stats.onlineReads++;
      const bad = v.content.check(got, io.offset);
      if (bad)
        this.fail(`${v.name}: read [${io.offset}, +${io.length}) while serving: ${JSON.stringify(bad)}`);
      return;
    }
    v.content.apply(io, ++this.counters.acks);
    if (kind === 'write') {
      this.stats.writesAcked++;
      this.stats.bytesWritten += io.length;
      if (fua) this.stats.fuaWrites++;
    } else if (kind === 'trim') this.stats.trimsAcked++;
    else this.stats.zeroesAcked++;
  }

  private async flush(v: DeviceObject, conn: Connection): Promise<void> {
    const covers = this.counters.acks;
    this.flushesInFlight++;
    try {
      const p = conn.client.flush();
      this.sentOne('flush');
      await p;
    } catch (e) {
      if (this.killing) throw new Killed();
      this.fail(`${v.name}: NBD flush failed while the server was up: ${(e as Error).message}`);
    } finally {
      this.flushesInFlight--;
    }
    v.content.flushedAck = Math.max(v.content.flushedAck, covers);
    this.stats.flushesAcked++;
  }
}
