// Receiving without Node's per-read allocations. A stream socket normally hands every read over
// in a freshly allocated 64 KiB buffer; at 1-2 GB/s of WRITE payloads that is tens of thousands
// of external ArrayBuffers a second, and V8 answers external-memory growth with major
// (mark-compact) collections, whose cost grows with the heap: on a thin-pool server with its
// metadata cache, a third of the CPU went to them (perf, 1 MiB overwrites). With `onread`,
// libuv reads into buffers we choose instead: WRITE payloads straight into their final
// (recycled) buffer, in reads as large as the socket has ready, and everything else into a
// slab whose bytes the byte queue keeps as views until it has parsed or copied them. Once the
// queue is empty the slab is rewound: a new slab per 256 KiB read was 100-170 MB/s of external
// allocations under 1 MiB writes (each read after a header takes up to 64 KiB of payload), and
// the mark-compact collections they triggered took 10% of a thin-pool server's CPU.
//
// The NBD client (nbd/client) creates its sockets with these reads from the start. Node offers
// `onread` only to sockets it creates for us, not to accepted ones, so the accepted
// socket's handle is moved to a new Socket built with `onread`. That touches the documented-in-
// practice but private `_handle`; when it is missing (or is not a stream handle that can take a
// user buffer) `adoptWithDirectReceive` returns undefined and the ordinary path is used.
import net from 'node:net';

/** Where received bytes go: a sink (a WRITE payload being filled) or the slab → byte queue. */
export interface ReceiveTarget {
  /** The unfilled rest of a payload to read into directly, or undefined for the slab. */
  sink(): Buffer | undefined;
  /** `bytes` landed in the buffer that `sink()` returned. */
  sinkFilled(bytes: number): void;
  /** Bytes read into the slab, as a view that is valid until the queue has consumed it. */
  slabData(view: Buffer): void;
  /** True when no slab bytes wait to be consumed (nobody holds a view of them any more). */
  slabIdle(): boolean;
}

/** Slab size: views of it live in the byte queue until parsed or until a request completes. */
const SLAB_BYTES = 256 * 1024;
/** Reads into the slab are at most this large, like Node's own reads. */
const MAX_SLAB_READ_BYTES = 64 * 1024;
/** A slab whose free tail is smaller than this is replaced (small reads cost a syscall each). */
const MIN_SLAB_READ_BYTES = 16 * 1024;

interface HandleOwner {
  _handle?: { useUserBuffer?: unknown; readStart?: unknown } | null;
}

/**
 * Moves `socket`'s connection onto a new Socket whose reads go where `target` says. The old
 * socket object is retired (its server's connection count drops as if it had closed); the
 * connection itself stays open. Returns undefined, changing nothing, when that is not possible:
 * not a plain stream handle, or unsent output still queued on the old socket.
 */
export function adoptWithDirectReceive(socket: net.Socket, target: ReceiveTarget): net.Socket | undefined {
  const owner = socket as unknown as HandleOwner;
  const handle = owner._handle;
  if (
    !handle ||
    typeof handle.useUserBuffer !== 'function' ||
    typeof handle.readStart !== 'function' ||
    socket.destroyed ||
    socket.writableLength > 0 ||
    socket.readableLength > 0
  ) {
    return undefined;
  }
  owner._handle = null;
  // `handle` is how Node itself builds accepted sockets; the typings leave it out.
  const options: net.SocketConstructorOpts & net.ConnectOpts & { handle: unknown } = {
    handle,
    allowHalfOpen: socket.allowHalfOpen,
    onread: directReceiveReads(target),
  };
  const adopted = new net.Socket(options);
  // The old object no longer owns the connection: retiring it only updates its server's count.
  socket.destroy();
  return adopted;
}

/** The `onread` option of a socket whose reads go where `target` says (for sockets we create). */
export function directReceiveReads(target: ReceiveTarget): net.OnReadOpts {
  let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
  let slabUsed = 0;
  let lastWasSink = false;
  const nextBuffer = (): Buffer => {
    const sink = target.sink();
    if (sink && sink.length > 0) {
      lastWasSink = true;
      return sink;
    }
    lastWasSink = false;
    if (target.slabIdle()) slabUsed = 0;
    else if (slab.length - slabUsed < MIN_SLAB_READ_BYTES) {
      slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      slabUsed = 0;
    }
    return slab.subarray(slabUsed, Math.min(slab.length, slabUsed + MAX_SLAB_READ_BYTES));
  };
  return {
    buffer: nextBuffer,
    callback: (bytes: number) => {
      if (lastWasSink) {
        target.sinkFilled(bytes);
      } else {
        const view = slab.subarray(slabUsed, slabUsed + bytes);
        slabUsed += bytes;
        target.slabData(view);
      }
      return true;
    },
  };
}
