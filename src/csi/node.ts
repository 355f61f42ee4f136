// Node service: the host side. Attaching, formatting and mounting live in src/node; this file
// checks requests, keeps the staged-volume state and maps outcomes to CSI answers.
import fs from 'node:fs';
import path from 'node:path';
import {
  type Grant,
  type AttachOptions,
  attach,
  resumeAttachment,
  chooseMethod,
  detach,
  growAttachment,
} from '../node/attach';
import {
  type FsType,
  deviceSizeBytes,
  filesystemUsage,
  growFilesystem,
  makeFilesystem,
  probeFilesystem,
  requiredMountOptions,
} from '../node/filesystem';
import { bindMount, isMounted, mount, mountAt, pathExists, unmountAll } from '../node/mounts';
import { NodeState, type StagedVolume } from '../node/state';
import { logger } from '../log';
import { type DriverConfig, capabilitiesOf } from './config';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from './errors';
import { CTX_ENDPOINT, CTX_EXPORT, CTX_GROWABLE_EXPORT, CTX_READONLY } from './exports';
import { type OperationLocks, unary } from './handler';
import type { NodeHandlers, VolumeCapability } from './types';
import type { NodeExpandVolumeRequest__Output } from './generated/csi/v1/NodeExpandVolumeRequest';
import type { NodeExpandVolumeResponse } from './generated/csi/v1/NodeExpandVolumeResponse';
import type { NodeGetVolumeStatsRequest__Output } from './generated/csi/v1/NodeGetVolumeStatsRequest';
import type { NodeGetVolumeStatsResponse } from './generated/csi/v1/NodeGetVolumeStatsResponse';
import type { NodePublishVolumeRequest__Output } from './generated/csi/v1/NodePublishVolumeRequest';
import type { NodePublishVolumeResponse } from './generated/csi/v1/NodePublishVolumeResponse';
import type { NodeStageVolumeRequest__Output } from './generated/csi/v1/NodeStageVolumeRequest';
import type { NodeStageVolumeResponse } from './generated/csi/v1/NodeStageVolumeResponse';
import type { NodeUnpublishVolumeRequest__Output } from './generated/csi/v1/NodeUnpublishVolumeRequest';
import type { NodeUnpublishVolumeResponse } from './generated/csi/v1/NodeUnpublishVolumeResponse';
import type { NodeUnstageVolumeRequest__Output } from './generated/csi/v1/NodeUnstageVolumeRequest';
import type { NodeUnstageVolumeResponse } from './generated/csi/v1/NodeUnstageVolumeResponse';
import { capabilityProblem, isReadOnlyMode } from './validate';

const log = logger('node');

export class NodeService {
  readonly state: NodeState;

  constructor(private readonly config: DriverConfig) {
    this.state = new NodeState(config.stateDir);
  }

  /** After a restart: kernel attachments that lost their reconnection helper get it back. */
  async resume(): Promise<void> {
    for (const staged of this.state.all()) {
      try {
        const attachment = await resumeAttachment(
          staged.attachment,
          staged.grant,
          this.state.workDir(staged.volumeId),
          this.attachOptions(),
        );
        if (attachment !== staged.attachment) this.state.put({ ...staged, attachment });
      } catch (e) {
        log.error('could not resume a staged volume', {
          volumeId: staged.volumeId,
          error: (e as Error).message,
        });
      }
    }
  }

  private attachOptions(): AttachOptions {
    return {
      requestTimeoutSeconds: this.config.nbdRequestTimeoutSeconds,
      deadConnectionTimeoutSeconds: this.config.nbdDeadConnectionTimeoutSeconds,
      reconnectHelper: this.config.nbdReconnectHelper,
    };
  }

  /** Paths from the CO must stay inside the kubelet directories we were configured with. */
  private checkPath(p: string, field: string): string {
    if (!p) throw invalidArgument(`${field} is required`);
    if (!path.isAbsolute(p)) throw invalidArgument(`${field} must be an absolute path`);
    const resolved = path.resolve(p);
    const inside = this.config.kubeletDirs.some(
      (d) => resolved === d || resolved.startsWith(path.resolve(d) + path.sep),
    );
    if (!inside || resolved !== path.normalize(p).replace(/\/$/, ''))
      throw invalidArgument(
        `${field} ${p} is outside the allowed directories (${this.config.kubeletDirs.join(', ')})`,
      );
    return resolved;
  }

  private checkCapability(cap: VolumeCapability | null): VolumeCapability {
    const problem = capabilityProblem(cap);
    if (problem) throw invalidArgument(problem);
    return cap!;
  }

  private fsTypeOf(cap: VolumeCapability): FsType {
    return (cap.mount?.fs_type || this.config.defaultFsType) as FsType;
  }

  async stage(req: NodeStageVolumeRequest__Output): Promise<NodeStageVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    const stagingPath = this.checkPath(req.staging_target_path, 'staging_target_path');
    const cap = this.checkCapability(req.volume_capability);
    const block = !!cap.block;
    const existing = this.state.get(req.volume_id);
    if (existing) {
      if (existing.stagingPath !== stagingPath)
        throw alreadyExists(`volume is already staged at ${existing.stagingPath}`);
      if (existing.block !== block || (!block && existing.fsType !== this.fsTypeOf(cap)))
        throw alreadyExists('volume is already staged with a different capability');
      if (block || (await isMounted(stagingPath))) return {};
      // A half-finished stage: start over.
      await this.teardown(existing);
    }
    const ctx = req.publish_context;
    if (!ctx[CTX_ENDPOINT] || !ctx[CTX_EXPORT])
      throw failedPrecondition('publish_context lacks the NBD grant (was ControllerPublishVolume called?)');
    const grant: Grant = {
      endpoint: ctx[CTX_ENDPOINT],
      exportName: ctx[CTX_EXPORT],
      growableExportName: ctx[CTX_GROWABLE_EXPORT] ?? ctx[CTX_EXPORT],
      readOnly: ctx[CTX_READONLY] === 'true' || isReadOnlyMode(cap),
    };
    const method = chooseMethod(this.config.attachMethod);
    const attachment = await attach(grant, method, this.state.workDir(req.volume_id), this.attachOptions());
    const staged: StagedVolume = {
      volumeId: req.volume_id,
      stagingPath,
      block,
      readOnly: grant.readOnly,
      grant,
      attachment,
    };
    this.state.put(staged);
    try {
      if (!block) {
        const fsType = this.fsTypeOf(cap);
        const found = await probeFilesystem(attachment.device);
        if (!found) {
          if (grant.readOnly)
            throw failedPrecondition('volume is blank and published read-only: cannot create a filesystem');
          await makeFilesystem(attachment.device, fsType);
        } else if (found !== fsType) {
          throw failedPrecondition(`volume holds ${found}, not the requested ${fsType}`);
        }
        fs.mkdirSync(stagingPath, { recursive: true });
        const flags = [
          ...(cap.mount?.mount_flags ?? []),
          ...requiredMountOptions(fsType),
          ...(grant.readOnly ? ['ro'] : []),
        ];
        await mount(attachment.device, stagingPath, fsType, flags);
        staged.fsType = fsType;
        staged.mountFlags = cap.mount?.mount_flags ?? [];
        this.state.put(staged);
      }
    } catch (e) {
      await this.teardown(staged).catch(() => undefined);
      throw e;
    }
    return {};
  }

  private async teardown(staged: StagedVolume): Promise<void> {
    if (!staged.block) await unmountAll(staged.stagingPath);
    await detach(staged.attachment);
    this.state.remove(staged.volumeId);
  }

  async unstage(req: NodeUnstageVolumeRequest__Output): Promise<NodeUnstageVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    const stagingPath = this.checkPath(req.staging_target_path, 'staging_target_path');
    const staged = this.state.get(req.volume_id);
    if (!staged) {
      await unmountAll(stagingPath);
      return {};
    }
    await this.teardown(staged);
    return {};
  }

  async publish(req: NodePublishVolumeRequest__Output): Promise<NodePublishVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    const stagingPath = this.checkPath(req.staging_target_path, 'staging_target_path');
    const target = this.checkPath(req.target_path, 'target_path');
    const cap = this.checkCapability(req.volume_capability);
    const staged = this.state.get(req.volume_id);
    if (!staged || staged.stagingPath !== stagingPath)
      throw failedPrecondition(`volume ${req.volume_id} is not staged at ${stagingPath}`);
    if (staged.block !== !!cap.block)
      throw invalidArgument('capability differs from the one the volume was staged with');
    const readOnly = req.readonly || staged.readOnly;
    const current = await mountAt(target);
    if (current) {
      const isRo = current.options.includes('ro');
      if (isRo !== readOnly)
        throw alreadyExists(`${target} is already published ${isRo ? 'read-only' : 'read-write'}`);
      return {};
    }
    fs.mkdirSync(path.dirname(target), { recursive: true });
    if (staged.block) {
      if (!(await pathExists(target))) await fs.promises.writeFile(target, '');
      await bindMount(staged.attachment.device, target, readOnly);
    } else {
      fs.mkdirSync(target, { recursive: true });
      await bindMount(stagingPath, target, readOnly);
    }
    return {};
  }

  async unpublish(req: NodeUnpublishVolumeRequest__Output): Promise<NodeUnpublishVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    const target = this.checkPath(req.target_path, 'target_path');
    await unmountAll(target);
    if (await pathExists(target)) {
      if ((await fs.promises.lstat(target)).isDirectory()) await fs.promises.rmdir(target);
      else await fs.promises.rm(target);
    }
    return {};
  }

  private async stagedFor(volumeId: string, volumePath: string): Promise<StagedVolume> {
    if (!volumeId) throw invalidArgument('volume_id is required');
    if (!volumePath) throw invalidArgument('volume_path is required');
    const staged = this.state.get(volumeId);
    if (!staged) throw notFound(`volume ${volumeId} is not staged on this node`);
    if (!(await pathExists(volumePath))) throw notFound(`${volumePath} does not exist`);
    return staged;
  }

  async stats(req: NodeGetVolumeStatsRequest__Output): Promise<NodeGetVolumeStatsResponse> {
    const staged = await this.stagedFor(req.volume_id, req.volume_path);
    if (staged.block) {
      const size = await deviceSizeBytes(staged.attachment.device);
      return {
        usage: [{ unit: 'BYTES', total: size, used: 0, available: 0 }],
        volume_condition: { abnormal: false, message: 'attached' },
      };
    }
    try {
      const u = await filesystemUsage(req.volume_path);
      return {
        usage: [
          { unit: 'BYTES', ...u.bytes },
          { unit: 'INODES', ...u.inodes },
        ],
        volume_condition: { abnormal: false, message: 'mounted' },
      };
    } catch (e) {
      return {
        usage: [],
        volume_condition: { abnormal: true, message: `cannot read the filesystem: ${(e as Error).message}` },
      };
    }
  }

  async expand(req: NodeExpandVolumeRequest__Output): Promise<NodeExpandVolumeResponse> {
    const staged = await this.stagedFor(req.volume_id, req.volume_path);
    const size = await growAttachment(staged.attachment, staged.grant, this.attachOptions());
    const wanted = req.capacity_range?.required_bytes ?? 0;
    if (wanted > size)
      throw failedPrecondition(
        `the export is ${size} bytes, less than the requested ${wanted} (expand the controller side first)`,
      );
    if (!staged.block)
      await growFilesystem(staged.fsType ?? 'ext4', staged.attachment.device, staged.stagingPath);
    return { capacity_bytes: size };
  }

  handlers(locks: OperationLocks): NodeHandlers {
    const byVolume = (volumeId: string) => (volumeId ? [`node-volume:${volumeId}`] : []);
    return {
      NodeStageVolume: unary(locks, 'NodeStageVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.stage(r),
      }),
      NodeUnstageVolume: unary(locks, 'NodeUnstageVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.unstage(r),
      }),
      NodePublishVolume: unary(locks, 'NodePublishVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.publish(r),
      }),
      NodeUnpublishVolume: unary(locks, 'NodeUnpublishVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.unpublish(r),
      }),
      NodeGetVolumeStats: unary(locks, 'NodeGetVolumeStats', { run: (r) => this.stats(r) }),
      NodeExpandVolume: unary(locks, 'NodeExpandVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.expand(r),
      }),
      NodeGetCapabilities: unary(locks, 'NodeGetCapabilities', {
        run: async () => ({ capabilities: capabilitiesOf(this.config).node }),
      }),
      NodeGetInfo: unary(locks, 'NodeGetInfo', {
        run: async () => ({
          node_id: this.config.nodeId,
          max_volumes_per_node: this.config.maxVolumesPerNode,
          accessible_topology: { segments: this.config.topology },
        }),
      }),
    };
  }
}
