// STARTTLS with X.509: certificates made with openssl, libnbd (nbdinfo, nbdcopy) and qemu-img
// as clients, required and optional modes, client-certificate checks and secrets over TLS.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import * as P from '../../src/nbd/protocol';
import { startTestServer, type TestServer, tool } from './helpers';
import { RawClient } from './raw-client';

const MiB = 1024 * 1024;
const SECRET = 'tls-protected-secret';

interface Pki {
  dir: string;
  /** libnbd certificate directories (ca-cert.pem, client-cert.pem, client-key.pem). */
  goodClient: string;
  otherNodeClient: string;
  foreignClient: string;
  noClientCert: string;
  serverCert: string;
  serverKey: string;
  ca: string;
}

async function openssl(args: string[]): Promise<void> {
  await tool('openssl', args);
}

/** A CA, a server cert for 127.0.0.1, client certs for node-a and node-b, and a foreign CA's client. */
async function makePki(): Promise<Pki> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nbd-pki-'));
  const f = (name: string): string => path.join(dir, name);
  const ca = async (name: string): Promise<void> => {
    await openssl(
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`].concat([
        '-keyout',
        f(`${name}.key`),
        '-out',
        f(`${name}.pem`),
      ]),
    );
  };
  const leaf = async (name: string, caName: string, extensions: string): Promise<void> => {
    await openssl(
      ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', f(`${name}.key`)].concat([
        '-out',
        f(`${name}.csr`),
      ]),
    );
    await writeFile(f(`${name}.ext`), extensions);
    await openssl(
      [
        'x509',
        '-req',
        '-in',
        f(`${name}.csr`),
        '-CA',
        f(`${caName}.pem`),
        '-CAkey',
        f(`${caName}.key`),
      ].concat(['-CAcreateserial', '-days', '2', '-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`)]),
    );
  };
  await ca('ca');
  await ca('evil-ca');
  await leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  const clientExt = 'extendedKeyUsage=clientAuth\n';
  await leaf('node-a', 'ca', clientExt);
  await leaf('node-b', 'ca', clientExt);
  await leaf('intruder', 'evil-ca', clientExt);
  const clientDir = async (name: string, client?: string): Promise<string> => {
    const d = f(`libnbd-${name}`);
    await mkdir(d);
    await writeFile(path.join(d, 'ca-cert.pem'), await readFile(f('ca.pem')));
    if (client) {
      await writeFile(path.join(d, 'client-cert.pem'), await readFile(f(`${client}.pem`)));
      await writeFile(path.join(d, 'client-key.pem'), await readFile(f(`${client}.key`)));
    }
    return d;
  };
  return {
    dir,
    goodClient: await clientDir('good', 'node-a'),
    otherNodeClient: await clientDir('other', 'node-b'),
    foreignClient: await clientDir('foreign', 'intruder'),
    noClientCert: await clientDir('none'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    ca: f('ca.pem'),
  };
}

const tlsUri = (t: TestServer, name: string, certDir: string): string =>
  `nbds://127.0.0.1:${t.port}/${name}?tls-certificates=${certDir}`;

describe('TLS', () => {
  let pki: Pki;

  beforeAll(async () => {
    pki = await makePki();
  }, 60_000);
  afterAll(() => rm(pki.dir, { recursive: true, force: true }));

  describe('required mode with client certificates', () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer({
        sizeBytes: 16 * MiB,
        serverOptions: {
          tls: {
            mode: 'required',
            cert: await readFile(pki.serverCert),
            key: await readFile(pki.serverKey),
            ca: await readFile(pki.ca),
          },
        },
        extraExports: (device) => [
          { name: 'node-a-only', device, access: { kind: 'open' }, clientCertNames: ['node-a'] },
          { name: 'locked', device, access: { kind: 'secret', secret: SECRET } },
        ],
      });
      await t.device.write(0, Buffer.alloc(MiB, 0x5c));
    });
    afterAll(() => t.close());

    it('serves a client with a certificate from the CA over TLS', async () => {
      const { stdout } = await tool('nbdinfo', [tlsUri(t, 'disk', pki.goodClient)]);
      expect(stdout).toMatch(/with TLS/);
      expect(stdout).toMatch(/export-size: 16777216/);
    });

    it('moves data intact over TLS (nbdcopy in and out)', async () => {
      const image = randomBytes(8 * MiB);
      const source = path.join(t.dir, 'tls-in.img');
      const back = path.join(t.dir, 'tls-out.img');
      await writeFile(source, image);
      await tool('nbdcopy', [source, tlsUri(t, 'disk', pki.goodClient)]);
      await tool('nbdcopy', [tlsUri(t, 'disk', pki.goodClient), back]);
      const out = (await readFile(back)).subarray(0, 8 * MiB);
      expect(createHash('sha256').update(out).digest('hex')).toBe(
        createHash('sha256').update(image).digest('hex'),
      );
    });

    it('refuses plaintext clients: TLS_REQD for options, hard close for EXPORT_NAME', async () => {
      await expect(tool('nbdinfo', [t.uri('disk')])).rejects.toThrow(/TLS/i);
      const client = await RawClient.open({ port: t.port });
      for (const option of [P.NBD_OPT_GO, P.NBD_OPT_INFO, P.NBD_OPT_LIST, 4242, P.NBD_OPT_STRUCTURED_REPLY]) {
        const data =
          option === P.NBD_OPT_GO || option === P.NBD_OPT_INFO ? RawClient.infoRequest('disk') : undefined;
        const replies = await client.option(option, data);
        expect(replies.map((r) => r.type)).toEqual([P.NBD_REP_ERR_TLS_REQD]);
      }
      client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
      await client.closed;
      expect(client.queue.length).toBe(0); // not one byte of export data or size
    });

    it('rejects a client certificate from another CA, and a client without one', async () => {
      await expect(tool('nbdinfo', [tlsUri(t, 'disk', pki.foreignClient)])).rejects.toThrow();
      await expect(tool('nbdinfo', [tlsUri(t, 'disk', pki.noClientCert)])).rejects.toThrow();
    });

    it('lets only the named node open a node-restricted export', async () => {
      const ok = await tool('nbdinfo', [tlsUri(t, 'node-a-only', pki.goodClient)]);
      expect(ok.stdout).toMatch(/export-size: 16777216/);
      const denied = tool('nbdinfo', [tlsUri(t, 'node-a-only', pki.otherNodeClient)]);
      await expect(denied).rejects.toThrow(/opt_go/);
      await expect(denied).rejects.not.toThrow(/export-size/);
      // And the listing shows it only to node-a.
      const listA = await tool('nbdinfo', ['--list', '--json', tlsUri(t, '', pki.goodClient)]);
      const listB = await tool('nbdinfo', ['--list', '--json', tlsUri(t, '', pki.otherNodeClient)]);
      expect(listA.stdout).toContain('node-a-only');
      expect(listB.stdout).not.toContain('node-a-only');
    });

    it('never shows data to a wrong secret, even over TLS', async () => {
      await expect(tool('nbdinfo', [tlsUri(t, 'locked/not-the-secret', pki.goodClient)])).rejects.toThrow(
        /opt_go/,
      );
      const { stdout } = await tool('nbdcopy', [tlsUri(t, `locked/${SECRET}`, pki.goodClient), '-'], {
        timeoutMs: 60_000,
      });
      expect(stdout.length).toBeGreaterThan(0);
    });
  });

  describe('optional mode without client certificates', () => {
    let t: TestServer;
    beforeAll(async () => {
      t = await startTestServer({
        sizeBytes: 8 * MiB,
        serverOptions: {
          tls: { mode: 'optional', cert: await readFile(pki.serverCert), key: await readFile(pki.serverKey) },
        },
      });
    });
    afterAll(() => t.close());

    it('serves both plaintext and TLS clients', async () => {
      const plain = await tool('nbdinfo', [t.uri('disk')]);
      expect(plain.stdout).toMatch(/without TLS/);
      const secure = await tool('nbdinfo', [tlsUri(t, 'disk', pki.noClientCert)]);
      expect(secure.stdout).toMatch(/with TLS/);
    });

    it('qemu-img reads over TLS with an x509 object', async () => {
      await t.device.write(0, Buffer.alloc(MiB, 0x3d));
      const out = path.join(t.dir, 'qemu-tls.img');
      const caDir = path.join(t.dir, 'qemu-ca');
      await mkdir(caDir);
      await writeFile(path.join(caDir, 'ca-cert.pem'), await readFile(pki.ca));
      await tool('qemu-img', [
        'convert',
        '--object',
        `tls-creds-x509,id=tls0,endpoint=client,dir=${caDir}`,
        '--image-opts',
        `driver=nbd,host=127.0.0.1,port=${t.port},export=disk,tls-creds=tls0`,
        '-O',
        'raw',
        out,
      ]);
      const data = await readFile(out);
      expect(data.subarray(0, MiB).equals(Buffer.alloc(MiB, 0x3d))).toBe(true);
    });

    it('refuses a second STARTTLS and forgets plaintext negotiation after TLS', async () => {
      const client = await RawClient.open({ port: t.port });
      expect((await client.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type).toBe(P.NBD_REP_ACK);
      expect((await client.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ACK);
      const secure = tls.connect({
        socket: client.socket,
        ca: await readFile(pki.ca),
        servername: 'localhost',
      });
      await once(secure, 'secureConnect');
      const inner = RawClient.wrap(secure);
      expect((await inner.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ERR_INVALID);
      // Structured replies were negotiated in clear: forgotten, so no DF flag and simple replies.
      const { flags } = await inner.go('disk');
      expect(flags & P.NBD_FLAG_SEND_DF).toBe(0);
      const reply = await inner.read(0, 4096);
      expect(reply.chunks).toEqual([]);
      expect(reply.data?.equals(Buffer.alloc(4096, 0x3d))).toBe(true);
      inner.close();
    });
  });
});
