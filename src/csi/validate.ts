// Request checks shared by the services: names, capabilities, capacity ranges, parameters.
import type { DriverConfig } from './config';
import { invalidArgument, outOfRange } from './errors';
import type { CapacityRange, StringMap, VolumeCapability } from './types';

export const MAX_NAME_BYTES = 128;
const SUPPORTED_FS = new Set(['', 'ext4', 'xfs']);
const SUPPORTED_MODES = new Set([
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
  'MULTI_NODE_READER_ONLY',
]);
/** Modes that allow only one node at a time. */
export const SINGLE_NODE_MODES = new Set([
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
]);
/** Keys the Kubernetes sidecars add to parameters (PVC name, secrets' locations, ...). */
const SIDECAR_PREFIX = 'csi.storage.k8s.io/';

export function checkName(name: string, what = 'name'): void {
  if (!name) throw invalidArgument(`${what} is required`);
  if (Buffer.byteLength(name) > MAX_NAME_BYTES)
    throw invalidArgument(`${what} is longer than ${MAX_NAME_BYTES} bytes`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/.test(name))
    throw invalidArgument(`${what} contains a control character`);
}

/** Why a capability is not supported, or undefined when it is. */
export function capabilityProblem(cap: VolumeCapability | null | undefined): string | undefined {
  if (!cap) return 'a volume capability is required';
  if (!cap.block && !cap.mount) return 'a volume capability must say block or mount';
  const mode = cap.access_mode?.mode ?? 'UNKNOWN';
  if (mode === 'UNKNOWN') return 'access_mode is required';
  if (!SUPPORTED_MODES.has(mode)) return `access mode ${mode} is not supported (no multi-node writers)`;
  if (cap.mount && !SUPPORTED_FS.has(cap.mount.fs_type))
    return `filesystem ${JSON.stringify(cap.mount.fs_type)} is not supported (ext4 or xfs)`;
  return undefined;
}

export function checkCapabilities(caps: VolumeCapability[] | undefined): void {
  if (!caps || caps.length === 0) throw invalidArgument('volume_capabilities is required');
  for (const cap of caps) {
    const problem = capabilityProblem(cap);
    if (problem) throw invalidArgument(problem);
  }
}

export function isReadOnlyMode(cap: VolumeCapability | null | undefined): boolean {
  const mode = cap?.access_mode?.mode;
  return mode === 'SINGLE_NODE_READER_ONLY' || mode === 'MULTI_NODE_READER_ONLY';
}

/**
 * The size to provision for a capacity range: at least `floor` (a content source's size),
 * the default when nothing is asked, rounded up to `alignBytes`. Breaking the range or the
 * driver's limits is OUT_OF_RANGE; a malformed range is INVALID_ARGUMENT.
 */
export function sizeFor(
  range: CapacityRange | null | undefined,
  config: DriverConfig,
  alignBytes: number,
  floor = 0,
): number {
  const required = range?.required_bytes ?? 0;
  const limit = range?.limit_bytes ?? 0;
  if (required < 0 || limit < 0) throw invalidArgument('capacity_range values must not be negative');
  if (limit && required > limit)
    throw invalidArgument(`required_bytes ${required} exceeds limit_bytes ${limit}`);
  let size = Math.max(
    required || (limit ? Math.min(config.defaultVolumeBytes, limit) : config.defaultVolumeBytes),
    floor,
    config.minVolumeBytes,
  );
  size = Math.ceil(size / alignBytes) * alignBytes;
  if (limit && size > limit) {
    // Rounding up must not break the limit; use the largest aligned size inside it instead.
    const down = Math.floor(limit / alignBytes) * alignBytes;
    if (down >= Math.max(required, floor, config.minVolumeBytes) && down > 0) size = down;
    else
      throw outOfRange(
        `no size between ${Math.max(required, floor, config.minVolumeBytes)} and ${limit} bytes is a multiple of ${alignBytes}`,
      );
  }
  if (size > config.maxVolumeBytes)
    throw outOfRange(`${size} bytes exceeds the largest volume (${config.maxVolumeBytes} bytes)`);
  return size;
}

export interface VolumeParameters {
  maxOverprovisionRatio?: number;
}

/** StorageClass parameters: ours are checked, the sidecars' are ignored, others refused. */
export function parseVolumeParameters(parameters: StringMap): VolumeParameters {
  const out: VolumeParameters = {};
  for (const [key, value] of Object.entries(parameters)) {
    if (key.startsWith(SIDECAR_PREFIX)) continue;
    if (key === 'maxOverprovisionRatio') {
      const ratio = Number(value);
      if (!Number.isFinite(ratio) || ratio < 1)
        throw invalidArgument(
          `parameter maxOverprovisionRatio must be a number >= 1, not ${JSON.stringify(value)}`,
        );
      out.maxOverprovisionRatio = ratio;
    } else {
      throw invalidArgument(`unknown parameter ${JSON.stringify(key)} (known: maxOverprovisionRatio)`);
    }
  }
  return out;
}

export function parseSnapshotParameters(parameters: StringMap): void {
  for (const key of Object.keys(parameters)) {
    if (!key.startsWith(SIDECAR_PREFIX))
      throw invalidArgument(`unknown snapshot parameter ${JSON.stringify(key)}`);
  }
}

/** The parameters that decide compatibility of a repeated CreateVolume (sidecar keys aside). */
export function ownParameters(parameters: StringMap): StringMap {
  return Object.fromEntries(
    Object.entries(parameters)
      .filter(([k]) => !k.startsWith(SIDECAR_PREFIX))
      .sort(),
  );
}
