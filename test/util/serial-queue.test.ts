import { KeyedSerialQueue, SerialQueue } from '../../src/util/serial-queue';

describe('SerialQueue', () => {
  it('runs tasks one at a time, in order, past failures', async () => {
    const queue = new SerialQueue();
    const log: string[] = [];
    const task =
      (name: string, fail = false) =>
      async () => {
        log.push(`start ${name}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
        log.push(`end ${name}`);
        if (fail) throw new Error(name);
        return name;
      };
    const results = await Promise.allSettled([
      queue.run(task('a')),
      queue.run(task('b', true)),
      queue.run(task('c')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    await queue.idle();
  });
});

describe('KeyedSerialQueue', () => {
  it('serialises per key and lets other keys run alongside', async () => {
    const queue = new KeyedSerialQueue<string>();
    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const first = queue.run('x', async () => {
      await gate;
      log.push('x1');
    });
    const second = queue.run('x', () => log.push('x2'));
    await queue.run('y', () => log.push('y1'));
    release();
    await Promise.all([first, second]);
    expect(log).toEqual(['y1', 'x1', 'x2']);
  });
});
