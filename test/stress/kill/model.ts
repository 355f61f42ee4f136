// What the client was told: every CSI volume and snapshot, the state its last answered call left
// it in, and the call still unanswered when the server was killed (whose outcome is open).
import { Content } from './content';

export type Kind = 'volume' | 'snapshot';
/** `creating`/`deleting`: the call was sent and not answered; after a kill either outcome is fine. */
export type State = 'creating' | 'live' | 'deleting' | 'gone';
export type Publication = 'published' | 'unpublished' | 'publishing' | 'unpublishing';

export interface DeviceObject {
  kind: Kind;
  /** The CSI name (idempotency key). */
  name: string;
  /** The CSI id, once a CreateVolume/CreateSnapshot answer (or the reopened pool) told it. */
  csiId?: string;
  state: State;
  content: Content;
  /** Snapshots: the source volume's CSI id. Volumes from a snapshot: that snapshot's id. */
  sourceId?: string;
  publication: Publication;
  /** A ControllerExpandVolume in flight to this size. */
  growingTo?: number;
  /** Snapshots being taken of this volume: writes sent meanwhile leave their sectors unknown there. */
  snapshotsInProgress: Set<DeviceObject>;
}

export class Model {
  readonly objects: DeviceObject[] = [];
  private names = 0;

  constructor(readonly prefix: string) {}

  add(kind: Kind, content: Content, sourceId?: string): DeviceObject {
    const obj: DeviceObject = {
      kind,
      name: `${this.prefix}-${kind === 'volume' ? 'pvc' : 'snap'}-${++this.names}`,
      state: 'creating',
      content,
      sourceId,
      publication: 'unpublished',
      snapshotsInProgress: new Set(),
    };
    this.objects.push(obj);
    return obj;
  }

  live(kind: Kind): DeviceObject[] {
    return this.objects.filter((o) => o.kind === kind && o.state === 'live');
  }

  byName(name: string): DeviceObject | undefined {
    return this.objects.find((o) => o.name === name);
  }

  /** Forgets objects that are gone for good (their names must stay absent: kept in `goneNames`). */
  prune(goneNames: Set<string>): void {
    for (let i = this.objects.length - 1; i >= 0; i--) {
      if (this.objects[i].state === 'gone') {
        goneNames.add(this.objects[i].name);
        this.objects.splice(i, 1);
      }
    }
  }
}
