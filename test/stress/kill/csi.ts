// The campaign's CSI client: raw unary calls on the driver's socket, no retries (the campaign
// decides itself what a CO would retry), so that every outcome is seen as it happened.
import * as grpc from '@grpc/grpc-js';
import { packageFile } from '../../../src/backup/csi-client';
import { loadCsiRoot, serviceClient } from '../../../src/backup/csi-services';

type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

let constructors: Record<'Controller' | 'Identity', grpc.ServiceClientConstructor> | undefined;

export const BLOCK_CAPABILITY = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };

export class CsiCalls {
  private readonly stubs: Record<'Controller' | 'Identity', Stub>;

  constructor(socket: string) {
    if (!constructors) {
      const root = loadCsiRoot(packageFile('proto/csi.json'));
      constructors = {
        Controller: serviceClient(root, 'Controller'),
        Identity: serviceClient(root, 'Identity'),
      };
    }
    const creds = grpc.credentials.createInsecure();
    const target = `unix://${socket}`;
    this.stubs = {
      Controller: new constructors.Controller(target, creds) as unknown as Stub,
      Identity: new constructors.Identity(target, creds) as unknown as Stub,
    };
  }

  call<T = Record<string, unknown>>(method: string, request: object, timeoutMs = 20_000): Promise<T> {
    const stub = ['Probe', 'GetPluginInfo'].includes(method) ? this.stubs.Identity : this.stubs.Controller;
    const deadline = Date.now() + timeoutMs;
    return new Promise<T>((resolve, reject) =>
      stub[method].call(stub, request, { deadline }, (error: grpc.ServiceError | null, reply: T) =>
        error ? reject(error) : resolve(reply),
      ),
    );
  }

  /** Polls Probe until the driver says it is ready (its pool is open). */
  async waitReady(timeoutMs: number, alive: () => boolean): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until && alive()) {
      try {
        const r = await this.call<{ ready: { value: boolean } | null }>('Probe', {}, 1000);
        if (r.ready?.value) return;
      } catch {
        // socket not there yet
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(alive() ? `driver not ready after ${timeoutMs} ms` : 'driver exited before it was ready');
  }

  close(): void {
    for (const s of Object.values(this.stubs)) s.close();
  }
}
