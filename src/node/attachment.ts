// What attaching deals in: the grant a node gets from ControllerPublishVolume, the attachment it
// makes (kept in the node's state files, so its shape is an on-disk format), and the interface
// each attach method implements.

export type Method = 'kernel' | 'nbdfuse';

export interface Grant {
  /** host:port of the NBD server. */
  endpoint: string;
  /** `<export>/<secret>` at the volume's real size. */
  exportName: string;
  /** `<export>.grow/<secret>`: the growable view for nbdfuse. */
  growableExportName: string;
  readOnly: boolean;
}

export interface Attachment {
  method: Method;
  device: string;
  /** nbdfuse: where the FUSE file system is mounted, and its pid. */
  fuseDir?: string;
  fusePid?: number;
  /** kernel: the pid of the device's nbd-reconnect. */
  helperPid?: number;
}

/** What the attach methods take from the node's configuration. */
export interface AttachOptions {
  /** nbd-client -t: a request unanswered this long marks the connection dead and is requeued. */
  requestTimeoutSeconds: number;
  /** While no connection is alive, I/O waits this long for the helper to reconnect, then fails. */
  deadConnectionTimeoutSeconds: number;
  /**
   * The nbd-reconnect program (a name looked up in PATH, or a path): the kernel method's
   * reconnection helper, and the nbdfuse method's loop size-limit setter.
   */
  reconnectHelper: string;
}

/** One attach method: everything that differs between them lives behind this. */
export interface AttachStrategy {
  attach(grant: Grant, workDir: string, opts: AttachOptions): Promise<Attachment>;
  /** Undoes `attach`; safe to repeat. */
  detach(a: Attachment): Promise<void>;
  /** Makes the device `sizeBytes` large (the export has grown to that). */
  grow(a: Attachment, sizeBytes: number, opts: AttachOptions): Promise<void>;
  /** Restores what a restart of the node plugin took away; returns the attachment as it is now. */
  resume(a: Attachment, grant: Grant, workDir: string, opts: AttachOptions): Promise<Attachment>;
}
