import { runTool, thinTool, thinTools } from './tools';

describe('external thin-provisioning-tools', () => {
  it('has the system thin_check at 0.9.x and the trixie one at 1.1.x', async () => {
    const { v09, v11 } = thinTools();
    expect(v09).not.toBe(v11);

    const old = await runTool(v09, ['-V']);
    expect(old.code).toBe(0);
    expect(old.stdout.trim()).toMatch(/^0\.9\.\d+/);

    const cur = await runTool(v11, ['-V']);
    expect(cur.code).toBe(0);
    expect(cur.stdout.trim()).toMatch(/^1\.1\.\d+/);
  });

  it('resolves every tool the tests use for both versions', () => {
    const names = ['thin_check', 'thin_dump', 'thin_restore', 'thin_ls', 'thin_delta', 'thin_rmap'] as const;
    for (const name of names) {
      expect(thinTool(name, '0.9')).toMatch(new RegExp(`/${name}$`));
      expect(thinTool(name, '1.1')).toMatch(new RegExp(`/\\.tools/trixie/usr/sbin/${name}$`));
    }
  });

  it('runTool reports a non-zero exit instead of throwing, and feeds stdin', async () => {
    const res = await runTool('sh', ['-c', 'cat; echo oops >&2; exit 3'], { input: 'hello' });
    expect(res).toEqual({ code: 3, signal: null, stdout: 'hello', stderr: 'oops\n' });
  });

  it('runTool rejects when the program does not exist', async () => {
    await expect(runTool('./no-such-program-here', [])).rejects.toThrow(/no-such-program-here/);
  });
});
