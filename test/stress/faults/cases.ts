// The injected-I/O-error cases: each puts the pool's data or metadata file on a FaultDisk,
// serves device 1 from a child process, writes through a real NBD client, injects one fault,
// drives the operation that reaches it, then checks what the client was told, what the pool did,
// and — fault cleared, server gone, pool reopened here — the metadata and every page.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { NbdClient, NbdError } from '../../../src/nbd/client';
import { errorName } from '../../../src/nbd/protocol';
import { checkMetadata } from '../../../src/thin/check';
import { Pool } from '../../../src/thin/pool';
import { thinCheckBoth } from '../../helpers/thin-oracle';
import { type Fault, FaultDisk, type FaultErrno, type FaultOp, repoRoot } from './fault-disk';
import { PAGE, PageModel, pageData } from './model';

const BLOCK = 64 * 1024;
const PAGES_PER_BLOCK = BLOCK / PAGE;
const DEVICE_BYTES = 32 * 2 ** 20;
const SERVER = path.join(repoRoot(), 'test', 'stress', 'faults', 'server.js');

export type Target = 'data' | 'metadata';
export type Trigger = 'new-writes' | 'overwrite' | 'fua' | 'trim' | 'snapshot' | 'periodic';

export interface FaultCase {
  name: string;
  target: Target;
  fault: Omit<Fault, 'errno'>;
  trigger: Trigger;
  /** The pool must be read-only after the fault (else it must stay writable and keep erroring). */
  readOnly: boolean;
}

const any = (op: FaultOp, extra: Partial<Fault> = {}) => ({ op, ...extra });

export const CASES: FaultCase[] = [
  {
    name: 'data pwrite: first writes',
    target: 'data',
    fault: any('pwrite'),
    trigger: 'new-writes',
    readOnly: false,
  },
  {
    name: 'data pwrite: overwrites',
    target: 'data',
    fault: any('pwrite'),
    trigger: 'overwrite',
    readOnly: false,
  },
  {
    name: 'data pwrite: partial trim',
    target: 'data',
    fault: any('pwrite'),
    trigger: 'trim',
    readOnly: false,
  },
  {
    name: 'data fdatasync: FLUSH',
    target: 'data',
    fault: any('flush'),
    trigger: 'new-writes',
    readOnly: true,
  },
  { name: 'data fdatasync: FUA write', target: 'data', fault: any('flush'), trigger: 'fua', readOnly: true },
  {
    name: 'data fdatasync: snapshot',
    target: 'data',
    fault: any('flush'),
    trigger: 'snapshot',
    readOnly: true,
  },
  {
    name: 'data fdatasync: periodic commit',
    target: 'data',
    fault: any('flush'),
    trigger: 'periodic',
    readOnly: true,
  },
  {
    name: 'metadata pwrite: FLUSH',
    target: 'metadata',
    fault: any('pwrite'),
    trigger: 'new-writes',
    readOnly: true,
  },
  {
    name: 'metadata pwrite: trim + FLUSH',
    target: 'metadata',
    fault: any('pwrite'),
    trigger: 'trim',
    readOnly: true,
  },
  {
    name: 'metadata pwrite: snapshot',
    target: 'metadata',
    fault: any('pwrite'),
    trigger: 'snapshot',
    readOnly: true,
  },
  {
    name: 'metadata pwrite: periodic commit',
    target: 'metadata',
    fault: any('pwrite'),
    trigger: 'periodic',
    readOnly: true,
  },
  {
    name: 'metadata pwrite, 2nd write: FLUSH',
    target: 'metadata',
    fault: any('pwrite', { skip: 1 }),
    trigger: 'new-writes',
    readOnly: true,
  },
  {
    name: 'metadata fsync: FLUSH',
    target: 'metadata',
    fault: any('flush'),
    trigger: 'new-writes',
    readOnly: true,
  },
  {
    name: 'superblock pwrite: FLUSH',
    target: 'metadata',
    fault: any('pwrite', { offset: 0 }),
    trigger: 'new-writes',
    readOnly: true,
  },
  {
    name: 'superblock fsync: FLUSH',
    target: 'metadata',
    fault: any('flush', { skip: 1 }),
    trigger: 'new-writes',
    readOnly: true,
  },
];

export const ERRNOS: FaultErrno[] = ['EIO', 'ENOSPC'];

export interface CaseOutcome {
  name: string;
  errno: FaultErrno;
  ok: boolean;
  /** Why it failed (empty when ok). */
  problems: string[];
  /** Injected failures the fault layer counted. */
  hits: number;
  /** What the client was told for each command of the trigger, e.g. "WRITE×7 ok, FLUSH EIO". */
  replies: string;
  modeAfter: string;
  /** The FLUSH sent after the fault was cleared. */
  flushAfterClear: string;
  thinCheck: string;
  needsCheck: boolean;
  /** Pages that had to read back exactly / pages compared. */
  exactPages: number;
  pages: number;
  ms: number;
  /** Server and fault-layer output, for a failed case. */
  log: string;
}

/** 'ok', an NBD errno name, or 'DISCONNECT' (not an NBD error reply: a failure of its own). */
async function outcome(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
    return 'ok';
  } catch (e) {
    if (e instanceof NbdError) return errorName(e.code);
    return `DISCONNECT (${(e as Error).message})`;
  }
}

/** The pool's child process with its stdin command channel. */
class Server {
  private output = '';
  private readonly answers: ((v: Record<string, unknown>) => void)[] = [];
  readonly exited: Promise<number | null>;

  constructor(
    private readonly child: ChildProcess,
    ready: (v: Record<string, unknown>) => void,
  ) {
    this.answers.push(ready);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      this.answers.shift()?.(JSON.parse(line) as Record<string, unknown>);
    });
    child.stderr!.on('data', (d: Buffer) => (this.output = (this.output + d.toString()).slice(-20_000)));
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async start(poolDir: string, socket: string, commitIntervalMs: number): Promise<Server> {
    const child = spawn(process.execPath, [SERVER, repoRoot(), poolDir, socket, String(commitIntervalMs)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, THINPOOL_LOG_FORMAT: 'json', THINPOOL_LOG_LEVEL: 'info' },
    });
    let server: Server | undefined;
    const ready = new Promise<Record<string, unknown>>((resolve) => (server = new Server(child, resolve)));
    const first = await Promise.race([ready, server!.exited.then((code) => ({ exit: code }))]);
    if (!('listening' in first))
      throw new Error(`the pool server exited (${JSON.stringify(first)}): ${server!.log}`);
    return server!;
  }

  command(name: 'snap' | 'status'): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      this.answers.push(resolve);
      this.child.stdin!.write(`${name}\n`);
    });
  }

  /** SIGTERM (the pool closes, committing unless read-only); SIGKILL if it hangs. */
  async stop(): Promise<number | null> {
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }

  get log(): string {
    return this.output;
  }
}

/** Drives the client: every write and FLUSH goes through here so the page model follows. */
class Driver {
  readonly model = new PageModel();
  readonly replies: string[] = [];

  constructor(readonly client: NbdClient) {}

  async write(
    firstPage: number,
    count: number,
    options: { fua?: boolean; record?: boolean } = {},
  ): Promise<string> {
    const { values, data } = this.model.newData(firstPage, count);
    const r = await outcome(() => this.client.write(firstPage * PAGE, data, { fua: options.fua }));
    this.model.wrote(firstPage, values, r === 'ok' ? (options.fua ? 'durable' : 'acked') : 'failed');
    return this.note(options.fua ? 'FUA WRITE' : 'WRITE', r, options.record);
  }

  async trim(firstPage: number, count: number, record = true): Promise<string> {
    const r = await outcome(() => this.client.trim(firstPage * PAGE, count * PAGE));
    this.model.wrote(firstPage, new Array<number>(count).fill(0), r === 'ok' ? 'acked' : 'failed');
    return this.note('TRIM', r, record);
  }

  async flush(record = true): Promise<string> {
    const r = await outcome(() => this.client.flush());
    if (r === 'ok') this.model.flushed();
    return this.note('FLUSH', r, record);
  }

  note(what: string, result: string, record = true): string {
    if (record) this.replies.push(`${what} ${result}`);
    return result;
  }
}

/** Runs one case in `workDir` (left in place; the caller removes it). */
export async function runCase(c: FaultCase, errno: FaultErrno, workDir: string): Promise<CaseOutcome> {
  const started = Date.now();
  const problems: string[] = [];
  const poolDir = path.join(workDir, 'pool');
  const image = path.join(workDir, `${c.target}.img`);
  const target = path.join(poolDir, c.target);
  let disk: FaultDisk | undefined;
  let server: Server | undefined;
  let client: NbdClient | undefined;
  const result: CaseOutcome = {
    name: c.name,
    errno,
    ok: false,
    problems,
    hits: 0,
    replies: '',
    modeAfter: '?',
    flushAfterClear: '?',
    thinCheck: '?',
    needsCheck: false,
    exactPages: 0,
    pages: 0,
    ms: 0,
    log: '',
  };
  try {
    const pool = await Pool.create(
      poolDir,
      { dataSizeBytes: 64 * 2 ** 20, metadataSizeBytes: 4 * 2 ** 20 },
      { commitIntervalMs: 0 },
    );
    await pool.createThin(1, DEVICE_BYTES);
    await pool.close();
    fs.renameSync(target, image);
    disk = await FaultDisk.start(image, workDir);
    fs.symlinkSync(disk.file, target);
    const socket = path.join(workDir, 'nbd.sock');
    server = await Server.start(poolDir, socket, c.trigger === 'periodic' ? 100 : 0);
    client = await NbdClient.connect({ path: socket }, 'vol');
    const d = new Driver(client);

    // Before the fault: whole blocks 0-3, single pages in blocks 4-7, flushed.
    await Promise.all(
      [0, 1, 2, 3].map((b) => d.write(b * PAGES_PER_BLOCK, PAGES_PER_BLOCK, { record: false })),
    );
    await Promise.all([4, 5, 6, 7].map((b) => d.write(b * PAGES_PER_BLOCK + 5, 1, { record: false })));
    if ((await d.flush(false)) !== 'ok') throw new Error('the FLUSH before the fault failed');

    disk.inject({ ...c.fault, errno });
    await trigger(c.trigger, d, server);
    result.hits = disk.hits();
    result.replies = summarise(d.replies);
    if (result.hits === 0) problems.push('the fault was never reached');
    if (!d.replies.some((r) => r.endsWith(` ${errno}`)))
      problems.push(`no command was answered ${errno}: ${result.replies}`);
    if (d.replies.some((r) => r.includes('DISCONNECT'))) problems.push('a command got no NBD reply');

    // Still faulty: a write to a new block and a FLUSH must not both succeed.
    const probe = [await d.write(30 * PAGES_PER_BLOCK, 1, { record: false }), await d.flush(false)];
    if (probe.every((r) => r === 'ok'))
      problems.push('with the fault still on, WRITE and FLUSH both succeeded');

    disk.clear();
    const status = await server.command('status');
    result.modeAfter = String(status.mode);
    if ((status.mode === 'read-only') !== c.readOnly)
      problems.push(
        `the pool is ${status.mode} after the fault (expected ${c.readOnly ? 'read-only' : 'read-write'})`,
      );
    const afterWrite = await d.write(31 * PAGES_PER_BLOCK, 1, { record: false });
    result.flushAfterClear = await d.flush(false);
    if (c.readOnly && result.flushAfterClear === 'ok')
      problems.push('a FLUSH succeeded on the pool that failed (writes it acknowledged were dropped)');
    if (!c.readOnly && (afterWrite !== 'ok' || result.flushAfterClear !== 'ok'))
      problems.push(`after clearing the fault: WRITE ${afterWrite}, FLUSH ${result.flushAfterClear}`);

    await client.close().catch(() => undefined);
    client = undefined;
    const code = await server.stop();
    if (code !== 0) problems.push(`the pool server exited with ${code}`);
    result.log = server.log;
    server = undefined;
    await disk.stop();
    result.log += disk.stderr;
    disk = undefined;
    fs.rmSync(target);
    fs.renameSync(image, target);

    const metadata = path.join(poolDir, 'metadata');
    result.thinCheck = await checkAll(metadata, 'as left', problems);
    const reopened = await Pool.open(poolDir, { commitIntervalMs: 0 });
    try {
      result.needsCheck = reopened.status().needsCheck;
      const content = await reopened.device(1).read(0, DEVICE_BYTES);
      result.pages = DEVICE_BYTES / PAGE;
      for (let page = 0; page < result.pages; page++) {
        const got = content.subarray(page * PAGE, (page + 1) * PAGE);
        const allowed = d.model.allowed(page);
        if (!allowed.some((v) => pageData(v, page).equals(got))) {
          problems.push(`page ${page} reads back none of the values ${allowed.join('/')}`);
          if (problems.length > 20) break;
        }
      }
      result.exactPages = d.model.exactPages();
    } finally {
      await reopened.close();
    }
    const again = await checkAll(metadata, 'after the reopen', problems);
    if (again !== result.thinCheck) result.thinCheck += ` / ${again}`;
  } catch (e) {
    problems.push(`case aborted: ${(e as Error).stack ?? String(e)}`);
  } finally {
    await client?.close().catch(() => undefined);
    if (server) {
      result.log += server.log;
      server.kill();
      await server.exited;
    }
    if (disk) {
      result.log += disk.stderr;
      await disk.stop();
    }
  }
  result.ok = problems.length === 0;
  result.ms = Date.now() - started;
  return result;
}

async function trigger(kind: Trigger, d: Driver, server: Server): Promise<void> {
  const P = PAGES_PER_BLOCK;
  switch (kind) {
    case 'new-writes':
      // Pipelined first writes to 40 scattered new blocks (one page each: a commit of many
      // tree nodes, in several runs) and one whole new block.
      await Promise.all(Array.from({ length: 40 }, (_, i) => d.write((40 + i * 11) * P + 3, 1)));
      await d.write(22 * P, P);
      break;
    case 'overwrite':
      await Promise.all([0, 1, 2, 3].map((b) => d.write(b * P + 7, 1)));
      break;
    case 'fua':
      await d.write(23 * P, 1, { fua: true });
      break;
    case 'trim':
      // A whole block is unmapped (metadata only); a page of a mapped block is zeroed in place.
      await d.trim(1 * P, P);
      await d.trim(2 * P + 4, 1);
      break;
    case 'snapshot': {
      await d.write(24 * P, 1);
      const r = await server.command('snap');
      d.note('SNAPSHOT', r.ok ? 'ok' : String(r.errno));
      break;
    }
    case 'periodic':
      await Promise.all([25, 26, 27].map((b) => d.write(b * P, 1)));
      // A few periodic commits (every 100 ms) run into the fault before the client flushes.
      await new Promise((r) => setTimeout(r, 600));
      break;
  }
  await d.flush();
}

/** Our checker and both thin_check versions; returns e.g. "0.9 ok, 1.1 ok". */
async function checkAll(metadata: string, when: string, problems: string[]): Promise<string> {
  const ours = checkMetadata(metadata).errors;
  if (ours.length) problems.push(`our checker ${when}: ${ours.slice(0, 3).join('; ')}`);
  const results = await thinCheckBoth(metadata);
  for (const r of results)
    if (r.code !== 0) problems.push(`thin_check ${r.version} ${when}: ${r.output.trim()}`);
  return results.map((r) => `${r.version} ${r.code === 0 ? 'ok' : `exit ${r.code}`}`).join(', ');
}

/** "WRITE ok ×6, FLUSH EIO": consecutive equal replies folded. */
function summarise(replies: string[]): string {
  const out: { text: string; n: number }[] = [];
  for (const r of replies) {
    const last = out[out.length - 1];
    if (last?.text === r) last.n++;
    else out.push({ text: r, n: 1 });
  }
  return out.map((o) => (o.n > 1 ? `${o.text} ×${o.n}` : o.text)).join(', ');
}
