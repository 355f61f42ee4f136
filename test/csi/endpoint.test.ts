import { describeEndpoint, grpcAddress, parseCsiEndpoint } from '../../src/csi/endpoint';
import { scrub } from '../../src/exec';

describe('CSI endpoints', () => {
  it.each([
    ['unix:///csi/csi.sock', { kind: 'unix', path: '/csi/csi.sock' }, 'unix:///csi/csi.sock'],
    ['unix:/csi/csi.sock', { kind: 'unix', path: '/csi/csi.sock' }, 'unix:///csi/csi.sock'],
    ['/var/lib/csi.sock', { kind: 'unix', path: '/var/lib/csi.sock' }, 'unix:///var/lib/csi.sock'],
    ['tcp://0.0.0.0:10000', { kind: 'tcp', host: '0.0.0.0', port: 10000 }, '0.0.0.0:10000'],
    ['tcp://[::1]:9000/', { kind: 'tcp', host: '::1', port: 9000 }, '[::1]:9000'],
  ])('%s', (text, parsed, address) => {
    const endpoint = parseCsiEndpoint(text);
    expect(endpoint).toEqual(parsed);
    expect(grpcAddress(endpoint)).toBe(address);
    expect(describeEndpoint(endpoint)).toContain(endpoint.kind === 'unix' ? endpoint.path : 'tcp://');
  });

  it('resolves a relative socket path', () => {
    expect(parseCsiEndpoint('var/csi.sock')).toEqual({ kind: 'unix', path: `${process.cwd()}/var/csi.sock` });
  });

  it.each(['tcp://host', 'tcp://:80', 'tcp://h:99999', 'tcp://h:x', 'http://h:80', 'unix://', ''])(
    'refuses %p',
    (text) => {
      expect(() => parseCsiEndpoint(text)).toThrow(/CSI endpoint/);
    },
  );
});

describe('scrub', () => {
  it('hides every occurrence of every secret', () => {
    expect(scrub('nbd://h/vol/s3cr%2Bt and vol/s3cr+t', ['s3cr+t', 's3cr%2Bt'])).toBe(
      'nbd://h/vol/… and vol/…',
    );
  });

  it('leaves text without secrets alone, and ignores empty secrets', () => {
    expect(scrub('plain', [''])).toBe('plain');
    expect(scrub('plain')).toBe('plain');
  });
});
