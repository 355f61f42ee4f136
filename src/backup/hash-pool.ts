// SHA-256 of chunks off the main thread. The chunks live in one SharedArrayBuffer that the
// workers map once, so a job is a list of (offset, length) pairs and no bytes are copied or
// transferred; the main thread keeps receiving from the network while the workers hash. A chunk
// of zeros gets the empty string instead of a hash (checked first: it is a cheap memcmp).
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

/** The workers' code, as a string so that it runs the same from dist/ and under ts-jest. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const slab = Buffer.from(workerData.slab);
let zeros = Buffer.alloc(0);
parentPort.on('message', ({ id, pieces }) => {
  const hashes = [];
  for (let i = 0; i < pieces.length; i += 2) {
    const data = slab.subarray(pieces[i], pieces[i] + pieces[i + 1]);
    if (zeros.length < data.length) zeros = Buffer.alloc(data.length);
    hashes.push(data.equals(zeros.subarray(0, data.length)) ? '' : createHash('sha256').update(data).digest('hex'));
  }
  parentPort.postMessage({ id, hashes });
});
`;

let zeros = Buffer.alloc(0);

/** The hash of `data`, or '' when it is all zeros (what the workers compute, on this thread). */
export function chunkDigest(data: Buffer): string {
  if (zeros.length < data.length) zeros = Buffer.alloc(data.length);
  return data.equals(zeros.subarray(0, data.length)) ? '' : createHash('sha256').update(data).digest('hex');
}

interface Job {
  resolve: (hashes: string[]) => void;
  reject: (e: Error) => void;
}

export class HashPool {
  private readonly slabView: Buffer;
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly jobs = new Map<number, Job & { worker: number }>();
  private nextId = 1;
  private failure: Error | undefined;

  /** `threads` 0 hashes on the calling thread. */
  constructor(
    readonly slab: SharedArrayBuffer,
    threads: number,
  ) {
    this.slabView = Buffer.from(slab);
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { slab } });
      worker.on('message', ({ id, hashes }: { id: number; hashes: string[] }) => {
        const job = this.jobs.get(id)!;
        this.jobs.delete(id);
        this.load[job.worker]--;
        job.resolve(hashes);
      });
      worker.on('error', (e) => this.fail(new Error(`SHA-256 worker failed: ${e.message}`)));
      worker.unref();
      this.workers.push(worker);
      this.load.push(0);
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const job of this.jobs.values()) job.reject(error);
    this.jobs.clear();
  }

  /** Digests of the slab's ranges `[offset, length]`, in order ('' for zeros). */
  digest(pieces: [offset: number, length: number][]): Promise<string[]> {
    if (this.failure) return Promise.reject(this.failure);
    if (!this.workers.length)
      return Promise.resolve(pieces.map(([at, n]) => chunkDigest(this.slabView.subarray(at, at + n))));
    let worker = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.load[i] < this.load[worker]) worker = i;
    const id = this.nextId++;
    this.load[worker]++;
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject, worker });
      this.workers[worker].postMessage({ id, pieces: pieces.flat() });
    });
  }

  async close(): Promise<void> {
    this.fail(new Error('hash pool closed'));
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
