// Several connections to one export, when the server allows CAN_MULTI_CONN: each request goes
// to the connection with the fewest outstanding requests.
import { NbdClient } from './connection';
import type { ConnectOptions, NbdAddress, NbdExportInfo, ReadResult } from './types';

export class NbdConnectionPool {
  private constructor(readonly clients: NbdClient[]) {}

  static async open(
    address: NbdAddress,
    exportName: string,
    connections: number,
    options: ConnectOptions = {},
  ): Promise<NbdConnectionPool> {
    const first = await NbdClient.connect(address, exportName, options);
    const clients = [first];
    const more = first.info.canMultiConn ? Math.max(1, connections) - 1 : 0;
    try {
      clients.push(
        ...(await Promise.all(
          Array.from({ length: more }, () => NbdClient.connect(address, exportName, options)),
        )),
      );
    } catch (e) {
      for (const c of clients) c.destroy();
      throw e;
    }
    return new NbdConnectionPool(clients);
  }

  get info(): NbdExportInfo {
    return this.clients[0].info;
  }

  private pick(): NbdClient {
    let best = this.clients[0];
    for (const c of this.clients) if (c.inFlight < best.inFlight) best = c;
    return best;
  }

  read(offset: number, length: number, into?: Buffer): Promise<ReadResult> {
    return this.pick().read(offset, length, into);
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.pick().write(offset, data);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.pick().writeZeroes(offset, length);
  }

  /** Flushes every connection (a write is covered by a flush on the connection that took it). */
  async flush(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.flush()));
  }

  get bytesRequested(): number {
    return this.clients.reduce((sum, c) => sum + c.bytesRequested, 0);
  }

  get bytesReceived(): number {
    return this.clients.reduce((sum, c) => sum + c.bytesReceived, 0);
  }

  get bytesWritten(): number {
    return this.clients.reduce((sum, c) => sum + c.bytesWritten, 0);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }

  destroy(): void {
    for (const c of this.clients) c.destroy();
  }
}
