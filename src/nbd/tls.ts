import type { Socket } from 'node:net';
import tls from 'node:tls';
import { ConnectionClosedError } from './byte-queue';
import { ProtocolError } from './errors';

/**
 * off: STARTTLS is refused. optional: clients may upgrade. required: nothing but STARTTLS
 * and ABORT is accepted before the upgrade (the spec's FORCEDTLS).
 */
export type TlsMode = 'off' | 'optional' | 'required';

export interface TlsSettings {
  mode: TlsMode;
  /** PEM server certificate (chain) and private key. */
  cert: string | Buffer;
  key: string | Buffer;
  /** PEM CA bundle: when set, clients must present a certificate it signed. */
  ca?: string | Buffer;
}

export interface TlsUpgrade {
  socket: tls.TLSSocket;
  /** Subject CN and DNS subjectAltNames of the verified client certificate, if any. */
  certNames: string[];
}

/** Server TLS options for STARTTLS upgrades; parses the PEM once now so bad keys fail at start-up. */
export function createTlsOptions(settings: TlsSettings): tls.TlsOptions {
  const verifyClients = settings.ca !== undefined;
  const options: tls.TlsOptions = {
    cert: settings.cert,
    key: settings.key,
    ca: settings.ca,
    minVersion: 'TLSv1.2',
    requestCert: verifyClients,
    // Verification failures are judged in upgradeToTls so that they can be logged with a reason.
    rejectUnauthorized: false,
  };
  tls.createSecureContext(options);
  return options;
}

/**
 * Runs the server side of a TLS handshake on an already-connected socket (after STARTTLS's
 * ACK was flushed). A throwaway tls.Server does the work so that client-certificate checks
 * follow Node's own server logic through documented APIs; building its context costs about
 * a millisecond, small next to the handshake itself.
 */
export function upgradeToTls(raw: Socket, options: tls.TlsOptions): Promise<TlsUpgrade> {
  return new Promise((resolve, reject) => {
    const server = tls.createServer(options);
    const fail = (error: Error): void => {
      cleanup();
      reject(error);
    };
    const onClose = (): void => fail(new ConnectionClosedError('connection closed during TLS handshake'));
    const onClientError = (error: Error): void => {
      fail(new ProtocolError(`TLS handshake failed: ${error.message}`));
    };
    const onSecure = (socket: tls.TLSSocket): void => {
      cleanup();
      if (options.requestCert && !socket.authorized) {
        socket.destroy();
        reject(new ProtocolError(`client certificate rejected: ${String(socket.authorizationError)}`));
        return;
      }
      resolve({ socket, certNames: options.requestCert ? peerNames(socket) : [] });
    };
    function cleanup(): void {
      raw.removeListener('close', onClose);
      server.removeListener('tlsClientError', onClientError);
      server.removeListener('secureConnection', onSecure);
    }
    raw.once('close', onClose);
    server.once('tlsClientError', onClientError);
    server.once('secureConnection', onSecure);
    server.emit('connection', raw);
  });
}

function peerNames(socket: tls.TLSSocket): string[] {
  if (!socket.authorized) return [];
  const certificate = socket.getPeerCertificate();
  const names: string[] = [];
  const cn = certificate.subject?.CN as string | string[] | undefined;
  if (Array.isArray(cn)) names.push(...cn);
  else if (cn) names.push(cn);
  for (const entry of (certificate.subjectaltname ?? '').split(',')) {
    const trimmed = entry.trim();
    if (trimmed.startsWith('DNS:')) names.push(trimmed.slice(4));
  }
  return names;
}
