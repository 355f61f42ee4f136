import { ENTRIES_PER_BITMAP, RefCounts } from '../../src/pdata/space-map/ref-counts';

describe('RefCounts', () => {
  it('encodes counts with the high bit in the lower bit position (0x55 = four blocks of count 2)', () => {
    const counts = new RefCounts(8);
    for (let b = 0; b < 4; b++) counts.setCount(b, 2);
    expect(counts.bitmap(0)[0]).toBe(0x55);
    counts.setCount(5, 1);
    counts.setCount(6, 1);
    counts.setCount(7, 1);
    expect(counts.bitmap(0)[1]).toBe(0xa8);
  });

  it('keeps counts of 3 and more in the overflow map', () => {
    const counts = new RefCounts(100);
    counts.setCount(10, 7);
    expect(counts.count(10)).toBe(7);
    expect(counts.bitmap(0)[2] & 0x30).toBe(0x30);
    expect(counts.takeOverflowChanges()).toEqual([[10, 7]]);
    counts.dec(10);
    counts.dec(10);
    counts.dec(10);
    counts.dec(10);
    expect(counts.count(10)).toBe(3);
    counts.dec(10);
    expect(counts.count(10)).toBe(2);
    expect(counts.takeOverflowChanges()).toEqual([[10, 0]]);
  });

  it('never hands out a block freed in the current transaction', () => {
    const counts = new RefCounts(4);
    for (let i = 0; i < 4; i++) expect(counts.allocate()).toBe(i);
    counts.markCommitted();
    counts.dec(2);
    expect(counts.nrFree).toBe(1);
    expect(counts.nrAllocatable).toBe(0);
    expect(counts.allocate()).toBeUndefined();
    counts.markCommitted();
    expect(counts.allocate()).toBe(2);
  });

  it('tracks allocation across bitmaps and the kernel-style nr_free', () => {
    const counts = new RefCounts(ENTRIES_PER_BITMAP + 10);
    expect(counts.nrBitmaps).toBe(2);
    counts.setCount(ENTRIES_PER_BITMAP + 3, 1);
    expect(counts.nrAllocated).toBe(1);
    expect(counts.bitmapNrFree(1)).toBe(ENTRIES_PER_BITMAP - 1);
    expect(counts.bitmapFirstFree(1)).toBe(0);
    expect(() => counts.count(ENTRIES_PER_BITMAP + 10)).toThrow(RangeError);
  });
});
