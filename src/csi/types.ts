// The message shapes the driver reads and writes, generated from proto/csi.proto by
// scripts/csi-gen-types (proto-loader's generator, with the options of proto.ts). Requests are
// the `__Output` shapes (defaults filled in, oneofs named); replies are the input shapes.
import type * as v1 from './generated/csi/v1/VolumeCapability';

export type StringMap = Record<string, string>;

export type AccessModeName = v1._csi_v1_VolumeCapability_AccessMode_Mode__Output;
export type VolumeCapability = v1.VolumeCapability__Output;
export type { CapacityRange__Output as CapacityRange } from './generated/csi/v1/CapacityRange';
export type { VolumeContentSource__Output as VolumeContentSource } from './generated/csi/v1/VolumeContentSource';
export type { Topology__Output as Topology } from './generated/csi/v1/Topology';
export type { Volume } from './generated/csi/v1/Volume';
export type { Snapshot } from './generated/csi/v1/Snapshot';
export type { VolumeCondition } from './generated/csi/v1/VolumeCondition';
export type { ControllerHandlers } from './generated/csi/v1/Controller';
export type { IdentityHandlers } from './generated/csi/v1/Identity';
export type { NodeHandlers } from './generated/csi/v1/Node';
export type { SnapshotMetadataHandlers } from './generated/csi/v1/SnapshotMetadata';
