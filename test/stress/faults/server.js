// Child process of the injected-I/O-error cases: serves device 1 of a pool over NBD on a unix
// socket, and takes commands on stdin, one per line: `snap` (Pool.createSnap of device 1) and
// `status`. Each command answers one JSON line on stdout; logs go to stderr.
// Usage: node server.js <repo-root> <pool-dir> <socket> <commit-interval-ms>
const path = require('node:path');
const readline = require('node:readline');

const [root, dir, socket, interval] = process.argv.slice(2);
const dist = (m) => require(path.join(root, 'dist', m));
const { Pool } = dist('thin/pool');
const { NbdServer } = dist('nbd');
const { deviceExport } = dist('serve/device-exports');

const reply = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

(async () => {
  const pool = await Pool.open(dir, { commitIntervalMs: Number(interval) });
  const server = new NbdServer();
  server.addExport(deviceExport(pool, { name: 'vol', deviceId: 1, readOnly: false }));
  await server.listen({ path: socket });
  reply({ listening: socket });
  const commands = {
    snap: async () => ({ id: (await pool.createSnap('auto', 1)).id }),
    status: async () => ({ mode: pool.status().mode, reason: pool.readOnlyBecause ?? null }),
  };
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const run = commands[line.trim()];
    if (!run) return reply({ error: `unknown command ${line}` });
    run().then(
      (value) => reply({ ok: true, ...value }),
      (e) =>
        reply({
          ok: false,
          error: e.message,
          errno: typeof e.errno === 'string' ? e.errno : (e.code ?? null),
        }),
    );
  });
  process.once('SIGTERM', async () => {
    await server.close(1000);
    await pool.close().catch((e) => process.stderr.write(`close: ${e.message}\n`));
    process.exit(0);
  });
})().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(3);
});
