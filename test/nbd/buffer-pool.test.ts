import { BufferPool } from '../../src/nbd/buffer-pool';

describe('BufferPool', () => {
  it('recycles large buffers of the same size class', () => {
    const pool = new BufferPool(1 << 24);
    const a = pool.acquire(1 << 20);
    expect(a.length).toBe(1 << 20);
    pool.release(a);
    const b = pool.acquire((1 << 20) - 512);
    expect(b.buffer).toBe(a.buffer);
    expect(b.length).toBe((1 << 20) - 512);
  });

  it("never recycles buffers it did not create (e.g. Node's shared small-allocation slab)", () => {
    const pool = new BufferPool(1 << 24);
    const small = pool.acquire(512);
    const foreign = Buffer.alloc(8192);
    pool.release(small);
    pool.release(foreign);
    expect(pool.acquire(8192).buffer).not.toBe(foreign.buffer);
    expect(pool.acquire(4096).buffer).not.toBe(small.buffer);
  });

  it('ignores a double release instead of handing one buffer out twice', () => {
    const pool = new BufferPool(1 << 24);
    const a = pool.acquire(65536);
    pool.release(a);
    pool.release(a);
    const b = pool.acquire(65536);
    const c = pool.acquire(65536);
    expect(b.buffer).not.toBe(c.buffer);
  });

  it('keeps at most maxPooledBytes idle', () => {
    const pool = new BufferPool(65536);
    const a = pool.acquire(65536);
    const b = pool.acquire(65536);
    pool.release(a);
    pool.release(b);
    expect(pool.acquire(65536).buffer).toBe(a.buffer);
    expect(pool.acquire(65536).buffer).not.toBe(b.buffer);
  });
});
