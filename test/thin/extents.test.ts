import { blockRunsToExtents } from '../../src/thin/extents';

describe('blockRunsToExtents', () => {
  const bs = 65536;

  it('alternates unmarked and marked extents, clipped to the byte window', () => {
    const runs = [
      { begin: 1, length: 2 },
      { begin: 5, length: 1 },
    ];
    expect(blockRunsToExtents(runs, bs, 512, 6 * bs)).toEqual([
      { offset: 512, length: bs - 512, marked: false },
      { offset: bs, length: 2 * bs, marked: true },
      { offset: 3 * bs, length: 2 * bs, marked: false },
      { offset: 5 * bs, length: bs, marked: true },
      { offset: 6 * bs, length: 512, marked: false },
    ]);
  });

  it('merges adjacent runs and covers the window when nothing is marked', () => {
    expect(
      blockRunsToExtents(
        [
          { begin: 0, length: 1 },
          { begin: 1, length: 1 },
        ],
        bs,
        0,
        2 * bs,
      ),
    ).toEqual([{ offset: 0, length: 2 * bs, marked: true }]);
    expect(blockRunsToExtents([], bs, 4096, 8192)).toEqual([{ offset: 4096, length: 8192, marked: false }]);
  });
});
