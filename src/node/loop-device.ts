// Loop devices over a file, with a size limit below the file's size (nbdfuse's growable view).
import { run } from '../exec';
import { SerialQueue } from '../util/serial-queue';

// `losetup -f` picks the first free device; two at once could pick the same one.
const setups = new SerialQueue();

/** A new loop device over `file`, `sizeBytes` long; returns its path. */
export function setupLoop(file: string, sizeBytes: number, readOnly: boolean): Promise<string> {
  return setups.run(async () => {
    // prettier-ignore
    const args = [
      '-f', '--show', '--direct-io=on', '--sizelimit', String(sizeBytes), ...(readOnly ? ['-r'] : []), file,
    ];
    return (await run('losetup', args)).stdout.trim();
  });
}

export async function detachLoop(device: string): Promise<void> {
  await run('losetup', ['-d', device]);
}

// No util-linux command changes the size limit of a bound loop device (`losetup -c` re-reads
// the file's size but keeps the limit), so we issue LOOP_GET/SET_STATUS64 ourselves through
// perl, which every Debian system has (perl-base). struct loop_info64 is 232 bytes, with the
// u64 lo_sizelimit at offset 32.
const SET_SIZE_LIMIT = [
  'open(my $f, "+<", $ARGV[0]) or die "open $ARGV[0]: $!\\n";',
  'my $b = "\\0" x 232;',
  'ioctl($f, 0x4C05, $b) or die "LOOP_GET_STATUS64: $!\\n";',
  'substr($b, 32, 8) = pack("Q<", $ARGV[1]);',
  'ioctl($f, 0x4C04, $b) or die "LOOP_SET_STATUS64: $!\\n";',
].join(' ');

/** Raises (or lowers) the loop device's size limit while it stays in use. */
export async function setLoopSizeLimit(device: string, sizeBytes: number): Promise<void> {
  await run('perl', ['-e', SET_SIZE_LIMIT, device, String(sizeBytes)]);
}
