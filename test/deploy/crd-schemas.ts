// JSON schemas for the CRD-based objects we ship, written from the fields the CRDs publish:
// snapshot.storage.k8s.io/v1 (external-snapshotter v8 client/config/crd) and
// cbt.storage.k8s.io/v1beta1 SnapshotMetadataService (external-snapshot-metadata v1.x). Stricter
// than the API server on one point: unknown fields are errors here (the server would prune them),
// so that a misspelt field cannot pass.
const objectMeta = {
  type: 'object',
  required: ['name'],
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 253 },
    namespace: { type: 'string' },
    labels: { type: 'object', additionalProperties: { type: 'string' } },
    annotations: { type: 'object', additionalProperties: { type: 'string' } },
  },
  additionalProperties: false,
};

function typed(apiVersion: string, kind: string, properties: object, required: string[]): object {
  return {
    type: 'object',
    required: ['apiVersion', 'kind', 'metadata', ...required],
    properties: {
      apiVersion: { const: apiVersion },
      kind: { const: kind },
      metadata: objectMeta,
      ...properties,
    },
    additionalProperties: false,
  };
}

export const CRD_SCHEMAS: Record<string, object> = {
  'snapshot.storage.k8s.io/v1 VolumeSnapshotClass': typed(
    'snapshot.storage.k8s.io/v1',
    'VolumeSnapshotClass',
    {
      driver: { type: 'string', minLength: 1 },
      deletionPolicy: { enum: ['Delete', 'Retain'] },
      parameters: { type: 'object', additionalProperties: { type: 'string' } },
    },
    ['driver', 'deletionPolicy'],
  ),
  'snapshot.storage.k8s.io/v1 VolumeSnapshot': typed(
    'snapshot.storage.k8s.io/v1',
    'VolumeSnapshot',
    {
      spec: {
        type: 'object',
        required: ['source'],
        properties: {
          volumeSnapshotClassName: { type: 'string' },
          source: {
            type: 'object',
            // Exactly one of the two (the CRD's x-kubernetes-validations rule).
            oneOf: [{ required: ['persistentVolumeClaimName'] }, { required: ['volumeSnapshotContentName'] }],
            properties: {
              persistentVolumeClaimName: { type: 'string' },
              volumeSnapshotContentName: { type: 'string' },
            },
            additionalProperties: false,
          },
        },
        additionalProperties: false,
      },
    },
    ['spec'],
  ),
  'cbt.storage.k8s.io/v1beta1 SnapshotMetadataService': typed(
    'cbt.storage.k8s.io/v1beta1',
    'SnapshotMetadataService',
    {
      spec: {
        type: 'object',
        required: ['address', 'audience', 'caCert'],
        properties: {
          address: { type: 'string' },
          audience: { type: 'string' },
          // format: byte (base64).
          caCert: { type: 'string', pattern: '^[A-Za-z0-9+/]*={0,2}$' },
        },
        additionalProperties: false,
      },
    },
    ['spec'],
  ),
};
