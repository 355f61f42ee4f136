import { formatHostPort, parseHostPort } from '../../src/util/host-port';

describe('host:port', () => {
  it.each([
    ['127.0.0.1:10809', { host: '127.0.0.1', port: 10809 }, '127.0.0.1:10809'],
    ['[::1]:9000', { host: '::1', port: 9000 }, '[::1]:9000'],
    ['node-a.example:0', { host: 'node-a.example', port: 0 }, 'node-a.example:0'],
  ])('%s', (text, parsed, formatted) => {
    expect(parseHostPort(text)).toEqual(parsed);
    expect(formatHostPort(parsed)).toBe(formatted);
  });

  it.each(['host', ':80', 'h:99999', 'h:x', ''])('refuses %p, naming what it parsed', (text) => {
    expect(() => parseHostPort(text, '--listen')).toThrow(/^--listen ".*" is not host:port$/);
  });
});
