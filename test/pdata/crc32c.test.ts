import { crc32c, crc32cImplementation, crc32cRaw, jsCrc32cForBenchmark } from '../../src/pdata/crc32c';
import { randomBytes } from 'node:crypto';

describe('crc32c', () => {
  it('matches the iSCSI check value', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32cRaw(Buffer.from('123456789'))).toBe((0xe3069283 ^ 0xffffffff) >>> 0);
  });

  it('uses the native implementation here, and the JS fallback agrees with it', () => {
    expect(crc32cImplementation).toBe('native');
    const js = jsCrc32cForBenchmark();
    for (let i = 0; i < 50; i++) {
      const data = randomBytes(1 + Math.floor(Math.random() * 5000));
      expect(js(data)).toBe(crc32c(data));
    }
  });
});
