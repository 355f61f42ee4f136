// Every manifest in deploy/ (and deploy/examples/) parses and is a valid object of a current
// Kubernetes release (kubernetes-models' API schemas); CRD objects are checked against the fields
// their CRDs publish (crd-schemas.ts).
import fs from 'node:fs';
import path from 'node:path';
import Ajv from 'ajv';
import { CRD_SCHEMAS } from './crd-schemas';
import { DEPLOY, K8sObject, key, parseManifests, validateWithKubernetesModels, yamlFiles } from './helpers';

const files = [...yamlFiles(DEPLOY), ...yamlFiles(path.join(DEPLOY, 'examples'))];
const objects: { file: string; object: K8sObject }[] = files.flatMap((file) =>
  parseManifests(fs.readFileSync(file, 'utf8'), file).map((object) => ({
    file: path.relative(DEPLOY, file),
    object,
  })),
);

const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false });
const crdValidators = new Map(
  Object.entries(CRD_SCHEMAS).map(([k, schema]) => [k, ajv.compile(schema)] as const),
);

describe('deploy/ manifests', () => {
  test('every file holds at least one object with apiVersion, kind and name', () => {
    expect(files.length).toBeGreaterThan(8);
    for (const file of files) {
      const parsed = parseManifests(fs.readFileSync(file, 'utf8'), file);
      expect(parsed.length).toBeGreaterThan(0);
      for (const o of parsed) {
        expect(typeof o.apiVersion).toBe('string');
        expect(typeof o.kind).toBe('string');
        expect(o.metadata?.name).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      }
    }
  });

  test('no two objects share kind, namespace and name', () => {
    const seen = new Map<string, string>();
    for (const { file, object } of objects) {
      const k = key(object);
      expect(`${k} in ${seen.get(k) ?? file}`).toBe(`${k} in ${file}`);
      seen.set(k, file);
    }
  });

  test('built-in kinds validate against the Kubernetes API schemas (kubernetes-models)', () => {
    const builtIn = objects.filter(({ object }) => !crdValidators.has(`${object.apiVersion} ${object.kind}`));
    expect(builtIn.map(({ object }) => object.kind)).toEqual(
      expect.arrayContaining([
        'Namespace',
        'ServiceAccount',
        'ClusterRole',
        'ClusterRoleBinding',
        'Role',
        'RoleBinding',
        'CSIDriver',
        'StatefulSet',
        'DaemonSet',
        'Service',
        'StorageClass',
        'PersistentVolumeClaim',
        'Pod',
      ]),
    );
    const results = validateWithKubernetesModels(builtIn.map(({ object }) => object));
    const failures = builtIn
      .map(({ file, object }, i) => (results[i] ? `${file}: ${key(object)}: ${results[i]}` : null))
      .filter(Boolean);
    expect(failures).toEqual([]);
  });

  test('CRD objects (VolumeSnapshotClass, VolumeSnapshot, SnapshotMetadataService) match their published fields', () => {
    const crd = objects.filter(({ object }) => crdValidators.has(`${object.apiVersion} ${object.kind}`));
    expect(new Set(crd.map(({ object }) => object.kind))).toEqual(
      new Set(['VolumeSnapshotClass', 'VolumeSnapshot', 'SnapshotMetadataService']),
    );
    for (const { file, object } of crd) {
      const validate = crdValidators.get(`${object.apiVersion} ${object.kind}`)!;
      expect([file, key(object), validate(object) ? 'valid' : ajv.errorsText(validate.errors)]).toEqual([
        file,
        key(object),
        'valid',
      ]);
    }
  });

  test('the validators do reject broken objects', () => {
    const [badStorageClass, badDaemonSet] = validateWithKubernetesModels([
      { apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass', metadata: { name: 'x' }, volumeBindingMode: 3 },
      {
        apiVersion: 'apps/v1',
        kind: 'DaemonSet',
        metadata: { name: 'x' },
        spec: { selector: {}, template: { spec: { containers: [{ name: 'a', image: 'b', ports: 'none' }] } } },
      },
    ]);
    expect(badStorageClass).toMatch(/volumeBindingMode/);
    expect(badDaemonSet).toMatch(/ports/);
    const sms = crdValidators.get('cbt.storage.k8s.io/v1beta1 SnapshotMetadataService')!;
    expect(
      sms({
        apiVersion: 'cbt.storage.k8s.io/v1beta1',
        kind: 'SnapshotMetadataService',
        metadata: { name: 'x' },
        spec: { address: 'a:1', audience: 'b' },
      }),
    ).toBe(false);
    const vsc = crdValidators.get('snapshot.storage.k8s.io/v1 VolumeSnapshotClass')!;
    expect(
      vsc({
        apiVersion: 'snapshot.storage.k8s.io/v1',
        kind: 'VolumeSnapshotClass',
        metadata: { name: 'x' },
        driver: 'd',
        deletionPolicy: 'Keep',
      }),
    ).toBe(false);
  });
});
