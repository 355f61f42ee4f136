// Progress for long copies: a bar with throughput and ETA on a terminal, JSON lines otherwise
// (one a second and one at the end of each phase), nothing when asked to be quiet.
import cliProgress from 'cli-progress';

export interface Progress {
  /** Starts a phase (e.g. "read", "verify", "write") of `totalBytes`. */
  start(phase: string, totalBytes: number): void;
  add(bytes: number): void;
  finish(): void;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

class Meter {
  phase = '';
  total = 0;
  done = 0;
  startedAt = 0;

  start(phase: string, total: number): void {
    this.phase = phase;
    this.total = total;
    this.done = 0;
    this.startedAt = performance.now();
  }

  get seconds(): number {
    return (performance.now() - this.startedAt) / 1000;
  }

  get rate(): number {
    return this.seconds > 0 ? this.done / this.seconds : 0;
  }

  get eta(): number {
    return this.rate > 0 ? Math.max(0, (this.total - this.done) / this.rate) : 0;
  }
}

class BarProgress implements Progress {
  private readonly meter = new Meter();
  private bar: cliProgress.SingleBar | undefined;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  start(phase: string, totalBytes: number): void {
    this.finish();
    this.meter.start(phase, totalBytes);
    this.bar = new cliProgress.SingleBar(
      {
        stream: this.stream,
        format: '{phase} [{bar}] {percentage}% | {doneH} / {totalH} | {rateH}/s | ETA {eta_formatted}',
        barsize: 30,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(Math.max(totalBytes, 1), 0, this.payload());
  }

  private payload() {
    return {
      phase: this.meter.phase.padEnd(7),
      doneH: formatBytes(this.meter.done),
      totalH: formatBytes(this.meter.total),
      rateH: formatBytes(this.meter.rate),
    };
  }

  add(bytes: number): void {
    this.meter.done += bytes;
    this.bar?.update(this.meter.done, this.payload());
  }

  finish(): void {
    if (!this.bar) return;
    this.bar.update(Math.max(this.meter.total, 1), this.payload());
    this.bar.stop();
    this.bar = undefined;
  }
}

class JsonLinesProgress implements Progress {
  private readonly meter = new Meter();
  private lastAt = 0;
  private active = false;

  constructor(private readonly stream: NodeJS.WritableStream) {}

  private emit(): void {
    this.lastAt = performance.now();
    this.stream.write(
      JSON.stringify({
        event: 'progress',
        phase: this.meter.phase,
        bytesDone: this.meter.done,
        bytesTotal: this.meter.total,
        bytesPerSecond: Math.round(this.meter.rate),
        etaSeconds: Math.round(this.meter.eta * 10) / 10,
      }) + '\n',
    );
  }

  start(phase: string, totalBytes: number): void {
    this.finish();
    this.meter.start(phase, totalBytes);
    this.active = true;
    this.emit();
  }

  add(bytes: number): void {
    this.meter.done += bytes;
    if (performance.now() - this.lastAt >= 1000) this.emit();
  }

  finish(): void {
    if (!this.active) return;
    this.active = false;
    this.emit();
  }
}

export const silentProgress: Progress = { start() {}, add() {}, finish() {} };

/** A bar when `stream` is a terminal, JSON lines when it is not, nothing when `quiet`. */
export function progressFor(stream: NodeJS.WriteStream = process.stderr, quiet = false): Progress {
  if (quiet) return silentProgress;
  return stream.isTTY ? new BarProgress(stream) : new JsonLinesProgress(stream);
}
