// Serves one file over NBD with our server, for benchmarks and manual testing:
//   node dist/nbd-bench/bench/nbd/serve.js FILE [--port N | --socket PATH] [--name NAME] [--read-only]
// Prints "READY <address>" on stdout once listening; exits on SIGTERM/SIGINT.
import { FileBlockDevice } from '../../src/file-block-device';
import { NbdServer } from '../../src/nbd';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const file = args[0];
  if (!file) throw new Error('usage: serve.js FILE [--port N | --socket PATH] [--name NAME] [--read-only]');
  const option = (flag: string): string | undefined => {
    const at = args.indexOf(flag);
    return at >= 0 ? args[at + 1] : undefined;
  };
  const device = await FileBlockDevice.open(file, { readOnly: args.includes('--read-only') });
  const name = option('--name') ?? 'bench';
  const server = new NbdServer({ defaultExport: name });
  server.addExport({ name, description: `file ${file}`, device, access: { kind: 'open' } });
  const socketPath = option('--socket');
  const bound = await server.listen(
    socketPath ? { path: socketPath } : { host: '127.0.0.1', port: Number(option('--port') ?? 0) },
  );
  process.stdout.write(`READY ${JSON.stringify(bound)}\n`);
  const stop = async (): Promise<void> => {
    await server.close(1000);
    await device.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
}

main().catch((error: unknown) => {
  process.stderr.write(`serve: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
