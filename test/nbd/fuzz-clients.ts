// The two sides of a fuzz run over real sockets: hostile connections that play a script from
// fuzz-frames.ts, and a well-behaved client that writes, reads back and flushes its own region
// and reports every error or wrong byte. Used by test/nbd/fuzz.test.ts and test/stress/nbd-fuzz.ts.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import * as P from '../../src/nbd/protocol';
import { seededRandom } from '../helpers/random';
import type { HostileScript, Mode } from './fuzz-frames';
import { RawClient, type Reply, type Target } from './raw-client';

/** What the hostile side sent, by frame kind and scenario. */
export class FuzzStats {
  frames = 0;
  connections = 0;
  connectFailures = 0;
  replyBytes = 0;
  readonly byKind = new Map<string, number>();
  readonly byScenario = new Map<string, number>();

  /** Frame kinds grouped by their first word (opt, ext, sr, compact, flood, fatal, ...). */
  groups(): Map<string, number> {
    const out = new Map<string, number>();
    for (const [kind, n] of this.byKind) {
      const group = kind.split(':').slice(0, 2).join(':');
      out.set(group, (out.get(group) ?? 0) + n);
    }
    return new Map([...out].sort((a, b) => b[1] - a[1]));
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const TRICKLE_MAX_MS = 2000;
const CLOSE_WAIT_MS = 3000;

function connect(target: Target): net.Socket {
  return 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host ?? '127.0.0.1');
}

/** Plays one hostile script: sends its bytes (up to the cut), lingers, then leaves. */
export async function runHostile(target: Target, script: HostileScript, stats: FuzzStats): Promise<void> {
  const socket = connect(target);
  socket.on('error', () => undefined);
  const connected = await new Promise<boolean>((resolve) => {
    socket.once('connect', () => resolve(true));
    socket.once('close', () => resolve(false));
  });
  if (!connected) {
    stats.connectFailures++;
    return;
  }
  stats.connections++;
  stats.byScenario.set(script.scenario, (stats.byScenario.get(script.scenario) ?? 0) + 1);
  // Without a 'data' listener the socket never reads: replies pile up on the server's side.
  if (script.readReplies) socket.on('data', (chunk: Buffer) => (stats.replyBytes += chunk.length));

  let sent = 0;
  for (const frame of script.frames) {
    if (sent + frame.bytes.length > script.cutAt) break;
    sent += frame.bytes.length;
    stats.frames++;
    stats.byKind.set(frame.kind, (stats.byKind.get(frame.kind) ?? 0) + 1);
  }
  const stream = Buffer.concat(script.frames.map((f) => f.bytes)).subarray(0, script.cutAt);
  if (script.trickle) {
    const until = Date.now() + TRICKLE_MAX_MS;
    let at = 0;
    while (at < stream.length && Date.now() < until && !socket.destroyed) {
      const step = 1 + ((at * 7919) % 64);
      socket.write(stream.subarray(at, at + step));
      at += step;
      await sleep(1);
    }
    if (!socket.destroyed) socket.write(stream.subarray(at));
  } else {
    socket.write(stream);
  }
  await sleep(script.lingerMs);
  if (script.close === 'destroy' || !script.readReplies) socket.destroy();
  else socket.end();
  await new Promise<void>((resolve) => {
    if (socket.destroyed) return resolve();
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, CLOSE_WAIT_MS);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export interface GoodClientOptions {
  target: Target;
  exportName: string;
  /** Byte range only this client writes (the fuzzers are kept off it). */
  region: { start: number; end: number };
  mode: Mode;
  seed: number;
  stop: () => boolean;
  /** An operation slower than this counts as an error (the server must keep serving). */
  opTimeoutMs: number;
}

export interface GoodClientResult {
  ops: Map<string, number>;
  errors: string[];
  bytesVerified: number;
  maxLatencyMs: number;
}

const BLOCK = 4096;

/**
 * Writes random data, reads it back, re-reads older data, zeroes, flushes and asks block
 * status, checking every reply against its own copy of the region, until `stop()`; then
 * verifies the whole region once more and disconnects.
 */
export async function goodClient(options: GoodClientOptions): Promise<GoodClientResult> {
  const rand = seededRandom(options.seed);
  const { start, end } = options.region;
  const shadow = Buffer.alloc(end - start);
  const result: GoodClientResult = { ops: new Map(), errors: [], bytesVerified: 0, maxLatencyMs: 0 };
  const client = await RawClient.open(options.target);
  const session = await client.go(options.exportName, {
    structured: options.mode === 'structured',
    extended: options.mode === 'extended',
    contexts: options.mode === 'simple' ? undefined : ['base:allocation'],
  });
  const contextId = session.contexts.get('base:allocation');

  const timed = async (name: string, run: () => Promise<Reply>): Promise<Reply | undefined> => {
    const began = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), options.opTimeoutMs);
    });
    const reply = await Promise.race([run(), timeout]).catch((error: Error) => {
      result.errors.push(`${name}: ${error.message}`);
      return undefined;
    });
    clearTimeout(timer);
    const took = Date.now() - began;
    result.maxLatencyMs = Math.max(result.maxLatencyMs, took);
    result.ops.set(name, (result.ops.get(name) ?? 0) + 1);
    if (reply === undefined && took >= options.opTimeoutMs)
      result.errors.push(`${name}: no reply in ${took} ms`);
    else if (reply && reply.error !== 0) result.errors.push(`${name}: NBD error ${reply.error}`);
    return reply;
  };
  const verify = async (offset: number, length: number): Promise<boolean> => {
    const reply = await timed('read', () => client.read(start + offset, length));
    if (!reply || reply.error) return false;
    if (!reply.data?.equals(shadow.subarray(offset, offset + length))) {
      result.errors.push(`read at ${start + offset}+${length}: wrong data`);
      return false;
    }
    result.bytesVerified += length;
    return true;
  };
  const write = async (offset: number, data: Buffer, fua: boolean): Promise<boolean> => {
    const reply = await timed('write', () =>
      client.writeData(start + offset, data, fua ? P.NBD_CMD_FLAG_FUA : 0),
    );
    if (!reply || reply.error) return false;
    data.copy(shadow, offset);
    return true;
  };

  // Establish the region's contents, so every later read has something to be compared with.
  let ok = true;
  for (let at = 0; ok && at < shadow.length; at += 1 << 20) {
    ok = await write(at, randomBytes(Math.min(1 << 20, shadow.length - at)), false);
  }
  const blocks = shadow.length / BLOCK;
  while (ok && !options.stop() && result.errors.length === 0) {
    const count = 1 + rand.int(64);
    const offset = BLOCK * rand.int(blocks - count + 1);
    const roll = rand.next();
    if (roll < 0.4) {
      ok =
        (await write(offset, randomBytes(count * BLOCK), rand.next() < 0.2)) &&
        (await verify(offset, count * BLOCK));
    } else if (roll < 0.65) {
      ok = await verify(offset, count * BLOCK);
    } else if (roll < 0.75) {
      ok = (await timed('flush', () => client.request(P.NBD_CMD_FLUSH, 0, 0)))?.error === 0;
    } else if (roll < 0.88) {
      const flags = rand.next() < 0.5 ? P.NBD_CMD_FLAG_NO_HOLE : 0;
      const reply = await timed('write-zeroes', () =>
        client.request(P.NBD_CMD_WRITE_ZEROES, start + offset, count * BLOCK, { flags }),
      );
      ok = reply?.error === 0;
      if (ok) shadow.fill(0, offset, offset + count * BLOCK);
      ok = ok && (await verify(offset, count * BLOCK));
    } else if (contextId !== undefined) {
      const reply = await timed('block-status', () =>
        client.request(P.NBD_CMD_BLOCK_STATUS, start + offset, count * BLOCK),
      );
      ok = reply?.error === 0;
      if (ok && reply?.chunks.length !== 1) {
        result.errors.push(`block status: ${reply?.chunks.length} chunks for one context`);
        ok = false;
      }
    }
  }
  for (let at = 0; ok && at < shadow.length; at += 1 << 20) {
    ok = await verify(at, Math.min(1 << 20, shadow.length - at));
  }
  if (ok && (await timed('flush', () => client.request(P.NBD_CMD_FLUSH, 0, 0)))?.error !== 0) ok = false;
  client.disconnect();
  await Promise.race([client.closed, sleep(5000)]);
  client.close();
  return result;
}
