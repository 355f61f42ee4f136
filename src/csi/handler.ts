// The one request wrapper every RPC goes through: it logs the request with secrets redacted,
// takes the per-volume / per-name operation locks, and turns whatever was thrown into a gRPC
// status (errors.ts). Handlers themselves stay plain async functions.
import * as grpc from '@grpc/grpc-js';
import { logger } from '../log';
import { recordCsiRequest } from '../metrics/registry';
import { redactExportName } from '../util/export-name';
import { aborted, toStatus } from './errors';
import { CTX_EXPORT, CTX_GROWABLE_EXPORT } from './exports';

const log = logger('csi');

const SECRET_FIELDS = new Set(['secrets', 'mount_flags']);
/** publish_context values that are export names: logged without their grant secret. */
const EXPORT_CONTEXT_KEYS = new Set([CTX_EXPORT, CTX_GROWABLE_EXPORT]);

/** A copy of a request that is safe to log: secrets and mount flags masked, NBD grants cut. */
export function redact(value: unknown, key = ''): unknown {
  if (Array.isArray(value))
    return SECRET_FIELDS.has(key) ? value.map(() => '***') : value.map((v) => redact(v));
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (key === 'publish_context' && EXPORT_CONTEXT_KEYS.has(k))
      out[k] = typeof v === 'string' ? redactExportName(v) : '***';
    else if (SECRET_FIELDS.has(k) && v && typeof v === 'object' && !Array.isArray(v))
      out[k] = Object.fromEntries(Object.keys(v).map((name) => [name, '***']));
    else out[k] = redact(v, k);
  }
  return out;
}

interface Held {
  method: string;
  done: Promise<void>;
}

/**
 * Operation locks by key (`volume:<id>`, `name:<name>`, ...). A call finding its key held by
 * the same RPC waits for it and then runs (and so sees its result: the handlers are
 * idempotent); a different RPC on the same key gets ABORTED, as the spec's concurrency rules
 * allow.
 */
export class OperationLocks {
  private readonly held = new Map<string, Held>();

  async acquire(method: string, keys: string[]): Promise<() => void> {
    for (;;) {
      const busy = keys.map((k) => this.held.get(k)).find((h) => h !== undefined);
      if (!busy) break;
      if (busy.method !== method) {
        throw aborted(`an operation (${busy.method}) is already in progress for ${keys.join(', ')}`);
      }
      await busy.done;
    }
    let release!: () => void;
    const done = new Promise<void>((resolve) => (release = resolve));
    for (const k of keys) this.held.set(k, { method, done });
    return () => {
      for (const k of keys) this.held.delete(k);
      release();
    };
  }

  get size(): number {
    return this.held.size;
  }
}

export interface UnarySpec<Req, Res> {
  /** Lock keys for this request (none: no lock). */
  locks?: (request: Req) => string[];
  run: (request: Req) => Promise<Res>;
}

let nextRequestId = 1;

async function withLocks<T>(
  locks: OperationLocks,
  method: string,
  keys: string[],
  fn: () => Promise<T>,
): Promise<T> {
  if (keys.length === 0) return fn();
  const release = await locks.acquire(method, keys);
  try {
    return await fn();
  } finally {
    release();
  }
}

export function unary<Req, Res>(
  locks: OperationLocks,
  method: string,
  spec: UnarySpec<Req, Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const id = nextRequestId++;
    const started = Date.now();
    log.debug('request', { id, method, request: redact(call.request) });
    withLocks(locks, method, spec.locks?.(call.request) ?? [], () => spec.run(call.request)).then(
      (response) => {
        log.debug('response', { id, method, ms: Date.now() - started });
        recordCsiRequest(method, 'OK', (Date.now() - started) / 1000);
        callback(null, response);
      },
      (error: unknown) => {
        const { code, details } = toStatus(error);
        recordCsiRequest(method, grpc.status[code] ?? String(code), (Date.now() - started) / 1000);
        const internal = code === grpc.status.INTERNAL;
        log.log(internal ? 'error' : 'info', 'request failed', {
          id,
          method,
          code,
          details,
          request: redact(call.request),
        });
        if (internal && error instanceof Error) log.debug(error.stack ?? '');
        callback({ code, details });
      },
    );
  };
}

export interface StreamSpec<Req, Res> {
  locks?: (request: Req) => string[];
  /** Writes responses through `send`; resolves when the stream is complete. */
  run: (
    request: Req,
    send: (response: Res) => Promise<boolean>,
    call: grpc.ServerWritableStream<Req, Res>,
  ) => Promise<void>;
}

export function serverStream<Req, Res>(
  locks: OperationLocks,
  method: string,
  spec: StreamSpec<Req, Res>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const id = nextRequestId++;
    const started = Date.now();
    log.debug('request', { id, method, request: redact(call.request) });
    // Respect flow control: wait for 'drain' when the client reads slower than we write.
    const send = (response: Res): Promise<boolean> => {
      if (call.cancelled) return Promise.resolve(false);
      if (call.write(response)) return Promise.resolve(!call.cancelled);
      return new Promise((resolve) => {
        const done = (): void => {
          call.off('drain', done);
          call.off('cancelled', done);
          resolve(!call.cancelled);
        };
        call.on('drain', done);
        call.on('cancelled', done);
      });
    };
    withLocks(locks, method, spec.locks?.(call.request) ?? [], () => spec.run(call.request, send, call)).then(
      () => {
        recordCsiRequest(method, 'OK', (Date.now() - started) / 1000);
        if (!call.cancelled) call.end();
      },
      (error: unknown) => {
        const { code, details } = toStatus(error);
        recordCsiRequest(method, grpc.status[code] ?? String(code), (Date.now() - started) / 1000);
        log.info('request failed', { id, method, code, details, request: redact(call.request) });
        call.emit('error', { code, details });
      },
    );
  };
}
