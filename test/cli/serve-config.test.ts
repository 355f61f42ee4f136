// `thinpool serve` configuration: the one boolean setting, advertiseGetSnapshot, read from each
// layer (YAML file, THINPOOL_* environment, flag) with flags winning, and nonsense refused.
import fs from 'node:fs';
import path from 'node:path';
import yargs from 'yargs';
import { loadConfig, serveCommand } from '../../src/cli/commands/serve';
import { makeTempDir } from '../helpers/tmp';

const parse = (args: string[]) => serveCommand(yargs(args)).parseSync() as Record<string, unknown>;

describe('advertiseGetSnapshot', () => {
  const tmp = makeTempDir('thinpool-serve-config-');
  afterAll(() => tmp.cleanup());

  it('is off unless asked for, from a flag, the environment or the file', () => {
    expect(loadConfig(parse([]), {}).advertiseGetSnapshot).toBe(false);
    expect(loadConfig(parse(['--advertise-get-snapshot']), {}).advertiseGetSnapshot).toBe(true);
    expect(loadConfig(parse([]), { THINPOOL_ADVERTISE_GET_SNAPSHOT: 'true' }).advertiseGetSnapshot).toBe(
      true,
    );
    const file = path.join(tmp.dir, 'config.yaml');
    fs.writeFileSync(file, 'advertiseGetSnapshot: true\n');
    expect(loadConfig(parse(['--config', file]), {}).advertiseGetSnapshot).toBe(true);
    // The flag is the highest layer, in both directions.
    expect(
      loadConfig(parse(['--config', file, '--no-advertise-get-snapshot']), {}).advertiseGetSnapshot,
    ).toBe(false);
  });

  it('refuses a value that is not true or false', () => {
    expect(() => loadConfig(parse([]), { THINPOOL_ADVERTISE_GET_SNAPSHOT: 'yes' })).toThrow(
      /THINPOOL_ADVERTISE_GET_SNAPSHOT: yes is not true or false/,
    );
  });
});
