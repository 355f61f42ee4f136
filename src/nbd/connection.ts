// One client connection: owns the socket (swapped for a TLS socket after STARTTLS), runs the
// handshake, then hands the same byte queue to the transmission phase.
import type { Socket } from 'node:net';
import type tls from 'node:tls';
import type winston from 'winston';
import { ByteQueue, ConnectionClosedError } from './byte-queue';
import { adoptWithDirectReceive, type ReceiveTarget } from './direct-receive';
import { ProtocolError } from './errors';
import type { ClientIdentity, ExportRegistry } from './exports';
import { Handshake, type HandshakeIo, type Session } from './handshake';
import { type TlsMode, upgradeToTls } from './tls';
import { Transmission, type TransmissionLimits } from './transmission';

export interface ConnectionSettings {
  registry: ExportRegistry;
  tlsMode: TlsMode;
  tlsOptions: tls.TlsOptions | undefined;
  handshakeTimeoutMs: number;
  /** Transmission-phase idle time before the connection is dropped; 0 = never. */
  idleTimeoutMs: number;
  limits: TransmissionLimits;
  isShuttingDown(): boolean;
}

const DISCARD_STEP_BYTES = 64 * 1024;
/**
 * Haggling bounds what one client can make us hold: past this much received and unparsed input
 * the socket is paused, and past this much unsent reply no further option is read (a client
 * that sends options and never reads would otherwise grow our output buffer for as long as the
 * handshake timeout allows).
 */
const HANDSHAKE_MAX_QUEUED_BYTES = 256 * 1024;
const HANDSHAKE_MAX_UNSENT_BYTES = 256 * 1024;
const END_GRACE_MS = 5000;

export class Connection {
  private socket: Socket;
  private readonly queue = new ByteQueue();
  private transmission: Transmission | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private finishing = false;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;
  session: Session | undefined;
  private log: winston.Logger;

  constructor(
    socket: Socket,
    readonly id: number,
    private readonly settings: ConnectionSettings,
    parentLog: winston.Logger,
  ) {
    this.socket = socket;
    this.log = parentLog.child({ conn: id, remote: describePeer(socket) });
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    socket.setNoDelay(true);
    this.attach(socket);
  }

  /** Resolves when the socket has closed, for whatever reason. */
  get closedSignal(): Promise<void> {
    return this.closedPromise;
  }

  /** Runs the connection to the end; never throws. */
  async run(): Promise<void> {
    this.handshakeTimer = setTimeout(() => {
      this.log.warn('handshake timed out', { timeoutMs: this.settings.handshakeTimeoutMs });
      this.destroy();
    }, this.settings.handshakeTimeoutMs);
    try {
      const handshake = new Handshake(this.handshakeIo(), this.settings.registry, this.settings, this.log);
      const session = await handshake.run();
      clearTimeout(this.handshakeTimer);
      if (!session) {
        this.log.debug('client aborted the handshake');
        this.endSocket();
      } else {
        this.startTransmission(session);
      }
    } catch (error) {
      clearTimeout(this.handshakeTimer);
      if (error instanceof ConnectionClosedError) this.log.debug('client left during handshake');
      else if (error instanceof ProtocolError)
        this.log.warn('handshake protocol error', { reason: error.message });
      else
        this.log.error('handshake failed', { error: error instanceof Error ? error.stack : String(error) });
      this.destroy();
    }
    await this.closedPromise;
  }

  /** Stops taking requests, answers those in flight, then closes (server shutdown, export removal). */
  async closeGracefully(graceMs: number): Promise<void> {
    if (this.closed) return;
    const timer = setTimeout(() => this.destroy(), graceMs);
    if (this.transmission) await this.transmission.drain();
    else this.destroy();
    await this.closedPromise;
    clearTimeout(timer);
  }

  destroy(): void {
    if (!this.socket.destroyed) this.socket.destroy();
  }

  private attach(socket: Socket): void {
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  private detach(socket: Socket): void {
    socket.removeListener('data', this.onData);
    socket.removeListener('close', this.onClose);
    // The error listener stays: a late error on the raw socket must not crash the process.
  }

  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk);
    if (this.transmission) this.transmission.onData();
    else if (this.queue.length >= HANDSHAKE_MAX_QUEUED_BYTES) this.socket.pause();
  };

  private readonly onError = (error: Error): void => {
    // Resets and broken pipes are how clients often leave; 'close' follows and cleans up.
    this.log.debug('socket error', { error: error.message });
  };

  private readonly onClose = (): void => {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.handshakeTimer);
    this.queue.fail(new ConnectionClosedError());
    this.transmission?.stop();
    this.log.info('connection closed', { export: this.session?.export.name });
    this.resolveClosed();
  };

  private handshakeIo(): HandshakeIo {
    return {
      read: (bytes) => this.handshakeRead(bytes),
      discard: async (bytes) => {
        let left = bytes;
        while (left > 0) {
          const step = Math.min(left, DISCARD_STEP_BYTES);
          await this.handshakeRead(step);
          left -= step;
        }
      },
      write: (data) => {
        if (!this.socket.destroyed) this.socket.write(data);
      },
      startTls: (ack) => this.startTls(ack),
    };
  }

  /** Reads handshake input once our unsent replies are under the limit, resuming input as needed. */
  private async handshakeRead(bytes: number): Promise<Buffer> {
    while (this.socket.writableLength > HANDSHAKE_MAX_UNSENT_BYTES && !this.closed) {
      const socket = this.socket;
      await new Promise<void>((resolve) => {
        const done = () => {
          socket.removeListener('drain', done);
          socket.removeListener('close', done);
          resolve();
        };
        socket.once('drain', done);
        socket.once('close', done);
      });
    }
    if (this.queue.length < bytes && this.socket.isPaused()) this.socket.resume();
    return this.queue.read(bytes);
  }

  private async startTls(ack: Buffer): Promise<ClientIdentity> {
    const options = this.settings.tlsOptions;
    if (!options) throw new Error('STARTTLS accepted without TLS options');
    if (this.queue.length > 0) throw new ProtocolError('data sent after STARTTLS before its reply');
    const raw = this.socket;
    // Stop reading in clear before the ACK leaves, so the ClientHello reaches TLS, not us.
    this.detach(raw);
    raw.pause();
    await new Promise<void>((resolve, reject) =>
      raw.write(ack, (error) => (error ? reject(error) : resolve())),
    );
    const closedEarly = new Promise<never>((_, reject) =>
      raw.once('close', () => reject(new ConnectionClosedError('connection closed during TLS handshake'))),
    );
    let upgrade;
    try {
      upgrade = await Promise.race([upgradeToTls(raw, options), closedEarly]);
    } catch (error) {
      this.onClose();
      throw error;
    }
    this.socket = upgrade.socket;
    this.attach(upgrade.socket);
    this.log.info('TLS established', {
      protocol: upgrade.socket.getProtocol(),
      clientCert: upgrade.certNames.length > 0 ? upgrade.certNames : undefined,
    });
    return { tls: true, certNames: upgrade.certNames };
  }

  private startTransmission(session: Session): void {
    this.session = session;
    // Haggling may have paused input; from here the transmission's own limits decide.
    if (this.socket.isPaused()) this.socket.resume();
    this.log = this.log.child({ export: session.export.name });
    this.log.info('client connected', {
      via: session.via,
      sizeBytes: session.sizeBytes,
      readOnly: session.readOnly,
      flags: `0x${session.transmissionFlags.toString(16)}`,
      structuredReplies: session.structuredReplies,
      extendedHeaders: session.extendedHeaders,
      metaContexts: session.metaContexts.map((c) => c.name),
      tls: session.identity.tls,
    });
    const direct = !session.identity.tls && this.adoptDirectReceive();
    const transmission = new Transmission(
      this.socket,
      this.queue,
      session,
      this.settings.limits,
      this.log,
      (error) => this.finish(error),
      direct,
    );
    this.transmission = transmission;
    if (this.settings.idleTimeoutMs > 0) {
      this.socket.setTimeout(this.settings.idleTimeoutMs, () => {
        if (transmission.requestsInFlight > 0) return;
        this.log.info('closing idle connection', { idleTimeoutMs: this.settings.idleTimeoutMs });
        this.destroy();
      });
    }
    transmission.onData();
  }

  /** Switches a plain socket to direct receive (see direct-receive.ts); false if not possible. */
  private adoptDirectReceive(): boolean {
    const raw = this.socket;
    // Reads land in the transmission once it exists (synchronously after this returns).
    const target: ReceiveTarget = {
      sink: () => this.transmission?.sink(),
      sinkFilled: (bytes) => this.transmission?.sinkFilled(bytes),
      slabData: (view) => {
        this.queue.push(view);
        this.transmission?.onData();
      },
      slabIdle: () => this.queue.length === 0,
    };
    this.detach(raw);
    const adopted = adoptWithDirectReceive(raw, target);
    if (!adopted) {
      this.attach(raw);
      return false;
    }
    this.socket = adopted;
    this.attach(adopted);
    return true;
  }

  private finish(error?: ProtocolError): void {
    if (error) {
      this.log.warn('protocol error, dropping client', { reason: error.message });
      this.destroy();
      return;
    }
    this.endSocket();
  }

  /** Half-closes, and makes sure a client that never closes its side can't keep us open. */
  private endSocket(): void {
    if (this.finishing) return;
    this.finishing = true;
    this.socket.end();
    // Read on, so the client's own close is seen at once: input was paused when DISC arrived,
    // and a direct-receive socket really stops reading when paused (EOF included). Anything
    // still sent is ignored: the transmission takes no new requests.
    this.socket.resume();
    setTimeout(() => this.destroy(), END_GRACE_MS).unref();
  }
}

function describePeer(socket: Socket): string {
  if (socket.remoteAddress) return `${socket.remoteAddress}:${socket.remotePort}`;
  return 'unix';
}
