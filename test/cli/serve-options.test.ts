// `thinpool serve --help` from the real binary (built by jest's global setup): every option is
// described, shows how its value is written and its default from `defaultConfig`, and has a row in
// docs/csi.md; and the typed flags still load through every layer (flag, THINPOOL_*, YAML file).
import fs from 'node:fs';
import path from 'node:path';
import yargs from 'yargs';
import { FIELDS, loadConfig, serveCommand } from '../../src/cli/commands/serve';
import { defaultConfig } from '../../src/csi/config';
import { formatSize, parseSize } from '../../src/util/size';
import { CLI } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { REPO_ROOT, runTool } from '../helpers/tools';

const parse = (args: string[]) => serveCommand(yargs(args)).parseSync() as Record<string, unknown>;

interface HelpEntry {
  /** Everything yargs printed for the option after its name, on one line. */
  text: string;
  /** `text` without the bracketed type, choices, default and value hints. */
  description: string;
  defaultShown?: string;
}

/** The options section of the help: an entry starts at `  --name` and runs until the next one. */
function helpEntries(help: string): Map<string, HelpEntry> {
  const options = help.slice(help.indexOf('Options:'));
  const epilogue = options.search(/\n\n\S/);
  const section = epilogue < 0 ? options : options.slice(0, epilogue);
  const entries = new Map<string, HelpEntry>();
  for (const chunk of section.split(/\n(?= {2}--)/).slice(1)) {
    const m = /^ {2}--([a-z][a-z-]*)([\s\S]*)$/.exec(chunk)!;
    const text = m[2].replace(/\s+/g, ' ').trim();
    entries.set(m[1], {
      text,
      description: text.replace(/\[[^\]]*\]/g, '').trim(),
      defaultShown: /\[default: ([^\]]*)\]/.exec(text)?.[1],
    });
  }
  return entries;
}

describe('thinpool serve --help', () => {
  let entries: Map<string, HelpEntry>;
  beforeAll(async () => {
    const result = await runTool(process.execPath, [CLI, 'serve', '--help'], { cwd: REPO_ROOT });
    expect(result).toMatchObject({ code: 0, stderr: '' });
    entries = helpEntries(result.stdout);
  });

  it('lists every option of the command, each with a description', () => {
    const defined = [...FIELDS.map((f) => f.flag), 'role', 'config', 'topology', 'help', 'version'];
    expect([...entries.keys()].sort()).toEqual(defined.sort());
    const undescribed = [...entries].filter(([, e]) => !/[a-z]{3}/i.test(e.description)).map(([f]) => f);
    expect(undescribed).toEqual([]);
  });

  it('shows each setting as the kind of value it takes, with its default', () => {
    const defaults = defaultConfig();
    const shownType = {
      number: '[number]',
      boolean: '[boolean]',
      string: '[string]',
      size: '[string]',
      list: '[string]',
    };
    for (const { flag, key, kind } of FIELDS) {
      const entry = entries.get(flag)!;
      const value = defaults[key];
      // Sizes and ratios are numbers in the configuration, never a bare string on the command line.
      if (typeof value === 'number')
        expect([flag, kind]).toEqual([flag, expect.stringMatching(/^(number|size)$/)]);
      expect([flag, entry.text]).toEqual([flag, expect.stringContaining(shownType[kind])]);
      if (kind === 'size') expect([flag, entry.text]).toEqual([flag, expect.stringContaining('[size: ')]);
      if (kind === 'list') expect([flag, entry.text]).toEqual([flag, expect.stringContaining('[list: ')]);
      expect([flag, entry.defaultShown]).toEqual([flag, expect.any(String)]);
    }
    // Printed from defaultConfig, in a form the option accepts back.
    expect(entries.get('nbd-port')!.defaultShown).toBe(String(defaults.nbdPort));
    expect(entries.get('max-overprovision-ratio')!.defaultShown).toBe(String(defaults.maxOverprovisionRatio));
    expect(entries.get('pool-size')!.defaultShown).toBe(formatSize(defaults.poolDataSizeBytes));
    for (const [flag, key] of [
      ['pool-size', 'poolDataSizeBytes'],
      ['default-volume-size', 'defaultVolumeBytes'],
      ['max-volume-size', 'maxVolumeBytes'],
    ] as const)
      expect(parseSize(entries.get(flag)!.defaultShown!)).toBe(defaults[key]);
    // Paths below the working directory are shown relative to it, as docs/csi.md writes them.
    expect(entries.get('pool-dir')!.defaultShown).toBe('./var/pool');
    expect(entries.get('kubelet-dirs')!.defaultShown).toBe('/var/lib/kubelet,./var');
    expect(entries.get('role')!.defaultShown).toBe(defaults.role);
  });
});

test("docs/csi.md's flag table has a row for every setting", () => {
  const doc = fs.readFileSync(path.join(REPO_ROOT, 'docs', 'csi.md'), 'utf8');
  const rows = doc.split('\n').filter((line) => line.startsWith('| `--'));
  const documented = new Set(
    rows.flatMap((row) => [...row.split(' | ')[0].matchAll(/`--([a-z-]+)/g)].map((m) => m[1])),
  );
  expect(FIELDS.map((f) => f.flag).filter((flag) => !documented.has(flag))).toEqual([]);
});

describe('typed serve options', () => {
  const tmp = makeTempDir('thinpool-serve-options-');
  afterAll(() => tmp.cleanup());

  it('read numbers, sizes and lists from flags, the environment and the file alike', () => {
    const file = path.join(tmp.dir, 'config.yaml');
    fs.writeFileSync(
      file,
      'nbdPort: 1111\nmax-overprovision-ratio: 2.5\npool-size: 2GiB\nkubeletDirs: [/k1, /k2]\n',
    );
    const fromFile = loadConfig(parse(['--config', file]), {});
    expect(fromFile).toMatchObject({
      nbdPort: 1111,
      maxOverprovisionRatio: 2.5,
      poolDataSizeBytes: 2 * 1024 ** 3,
      kubeletDirs: ['/k1', '/k2'],
    });
    const env = { THINPOOL_NBD_PORT: '2222', THINPOOL_POOL_SIZE: '512M', THINPOOL_KUBELET_DIRS: '/e1,/e2' };
    expect(loadConfig(parse(['--config', file]), env)).toMatchObject({
      nbdPort: 2222,
      maxOverprovisionRatio: 2.5,
      poolDataSizeBytes: 512 * 1024 ** 2,
      kubeletDirs: ['/e1', '/e2'],
    });
    const flags = parse([
      '--config',
      file,
      '--nbd-port=3333',
      '--max-overprovision-ratio',
      '4',
      '--pool-size=10GiB',
      '--max-volume-size',
      '4096',
      '--kubelet-dirs=/f1,/f2',
    ]);
    expect(loadConfig(flags, env)).toMatchObject({
      nbdPort: 3333,
      maxOverprovisionRatio: 4,
      poolDataSizeBytes: 10 * 1024 ** 3,
      maxVolumeBytes: 4096,
      kubeletDirs: ['/f1', '/f2'],
    });
    // An option left out keeps its default rather than becoming 0 or NaN.
    expect(loadConfig(parse([]), {}).nbdPort).toBe(defaultConfig().nbdPort);
  });

  it('names the option whose value is not a number or a size', () => {
    expect(() => loadConfig(parse(['--nbd-port=abc']), {})).toThrow(/^--nbd-port must be a number$/);
    expect(() => loadConfig(parse([]), { THINPOOL_NBD_PORT: 'abc' })).toThrow(
      /^THINPOOL_NBD_PORT: abc is not a number$/,
    );
    expect(() => loadConfig(parse(['--pool-size=ten']), {})).toThrow(/^--pool-size: cannot read "ten"/);
  });
});
