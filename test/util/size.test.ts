import { formatSize, parseSize } from '../../src/util/size';

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['64k', 65536],
    ['64K', 65536],
    ['64KiB', 65536],
    ['10G', 10 * 2 ** 30],
    ['100Gi', 100 * 2 ** 30],
    ['16Ti', 16 * 2 ** 40],
    ['1.5M', 1.5 * 2 ** 20],
    ['2GB', 2 * 2 ** 30],
  ])('reads %s', (text, bytes) => expect(parseSize(text)).toBe(bytes));

  it.each(['', 'lots', '10X', '-1G', '1.3', 'G'])('refuses %j', (text) => {
    expect(() => parseSize(text, '--size')).toThrow(/--size/);
  });
});

describe('formatSize', () => {
  it('prints binary units', () => {
    expect(formatSize(65536)).toBe('64 KiB');
    expect(formatSize(10 * 2 ** 30)).toBe('10 GiB');
    expect(formatSize(1000)).toBe('1000 B');
  });
});
