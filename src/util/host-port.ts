// The one parser for `host:port` text (flags, endpoints in grants and URIs): an IPv6 host may be
// bracketed, the port must be a whole number a socket can use.

export interface HostPort {
  host: string;
  port: number;
}

/** Parses `host:port` or `[v6]:port`; `what` names the text in the error (e.g. `--listen`). */
export function parseHostPort(text: string, what = 'address'): HostPort {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const host = m?.[1].replace(/^\[(.*)\]$/, '$1') ?? '';
  const port = Number(m?.[2]);
  if (!m || !host || port > 65535) throw new RangeError(`${what} ${JSON.stringify(text)} is not host:port`);
  return { host, port };
}

/** `host:port`, bracketing an IPv6 host. */
export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
