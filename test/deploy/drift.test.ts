// The chart and deploy/ must not drift apart, values.yaml must satisfy values.schema.json, and the
// template-subset renderer must behave like helm on the constructs the chart uses.
import fs from 'node:fs';
import path from 'node:path';
import Ajv from 'ajv';
import YAML from 'yaml';
import { chartObjects, mergeValues, renderChart, renderTemplate, type RenderContext } from './chart-render';
import { CHART, DEPLOY, K8sObject, key, parseManifests, yamlFiles } from './helpers';
import { deployFiles } from './render-manifests';

type Container = {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string }[];
};

function podSpec(o: K8sObject): { containers: Container[]; initContainers?: Container[] } | undefined {
  const spec = o.spec as { template?: { spec: { containers: Container[]; initContainers?: Container[] } } };
  return spec?.template?.spec;
}

/** What must agree between chart and deploy/: kinds, names, images, args, volume mounts. */
function summary(objects: K8sObject[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const o of objects) {
    const pod = podSpec(o);
    out[key(o)] = pod
      ? [...(pod.initContainers ?? []), ...pod.containers].map((c) => ({
          name: c.name,
          image: c.image,
          command: c.command,
          args: c.args,
          volumeMounts: c.volumeMounts,
        }))
      : o.apiVersion;
  }
  return out;
}

const deployObjects = yamlFiles(DEPLOY)
  .filter((f) => path.basename(f) !== '00-namespace.yaml')
  .flatMap((f) => parseManifests(fs.readFileSync(f, 'utf8'), f));
const chart = renderChart(CHART, { releaseName: 'thinpool-csi', namespace: 'thinpool-csi' });
const chartObjs = chartObjects(chart) as K8sObject[];

describe('chart and deploy/', () => {
  test('same kinds, names, images, args and volume mounts for the default values', () => {
    expect(summary(deployObjects)).toEqual(summary(chartObjs));
  });

  test('deploy/ is exactly what scripts/render-manifests writes (run it after changing the chart)', () => {
    const expected = deployFiles(path.resolve(CHART, '..', '..'));
    const actual = new Map(
      yamlFiles(DEPLOY).map((f) => [path.basename(f), fs.readFileSync(f, 'utf8')] as const),
    );
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, text] of expected) expect(`${name}\n${actual.get(name)}`).toBe(`${name}\n${text}`);
  });

  test('the default install has every component the topology needs', () => {
    const kinds = chartObjs.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(kinds).toEqual(
      expect.arrayContaining([
        'CSIDriver/thinpool.csi.dev',
        'StatefulSet/thinpool-csi-controller',
        'DaemonSet/thinpool-csi-node',
        'Service/thinpool-csi-pool',
        'Service/thinpool-csi-snapshot-metadata',
        'SnapshotMetadataService/thinpool.csi.dev',
        'StorageClass/thinpool-ext4',
        'StorageClass/thinpool-xfs',
        'StorageClass/thinpool-block',
        'VolumeSnapshotClass/thinpool-snapshots',
      ]),
    );
    const sts = chartObjs.find((o) => o.kind === 'StatefulSet')!;
    expect(podSpec(sts)!.containers.map((c) => c.name)).toEqual([
      'thinpool',
      'csi-provisioner',
      'csi-attacher',
      'csi-snapshotter',
      'csi-resizer',
      'csi-snapshot-metadata',
      'liveness-probe',
    ]);
    const ds = chartObjs.find((o) => o.kind === 'DaemonSet')!;
    expect(podSpec(ds)!.containers.map((c) => c.name)).toEqual([
      'thinpool',
      'node-driver-registrar',
      'liveness-probe',
    ]);
    const kubelet = podSpec(ds)!.containers[0].volumeMounts!.find((m) => m.mountPath === '/var/lib/kubelet');
    expect(kubelet?.mountPropagation).toBe('Bidirectional');
    const driver = chartObjs.find((o) => o.kind === 'CSIDriver')!;
    expect(driver.spec).toMatchObject({
      attachRequired: true,
      podInfoOnMount: false,
      volumeLifecycleModes: ['Persistent'],
      fsGroupPolicy: 'File',
    });
    // Every image is pinned to a version tag.
    for (const o of chartObjs) {
      for (const c of [...(podSpec(o)?.initContainers ?? []), ...(podSpec(o)?.containers ?? [])])
        expect(c.image).toMatch(/:v?\d+\.\d+\.\d+$/);
    }
  });

  test('values turn features off and on', () => {
    const off = chartObjects(
      renderChart(CHART, {
        values: {
          snapshotMetadata: { enabled: false },
          capacityTracking: { enabled: false },
          storageClasses: { xfs: { enabled: false }, block: { enabled: false } },
          volumeSnapshotClass: { enabled: false },
        },
      }),
    ) as K8sObject[];
    const names = off.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(names).not.toContain('SnapshotMetadataService/thinpool.csi.dev');
    expect(names).not.toContain('VolumeSnapshotClass/thinpool-snapshots');
    expect(names).not.toContain('Role/thinpool-csi-provisioner-capacity');
    expect(names.filter((n) => n.startsWith('StorageClass/'))).toEqual(['StorageClass/thinpool-ext4']);
    const sts = off.find((o) => o.kind === 'StatefulSet')!;
    const provisioner = podSpec(sts)!.containers.find((c) => c.name === 'csi-provisioner')!;
    expect(provisioner.args).not.toContain('--enable-capacity');
    expect(podSpec(sts)!.containers.map((c) => c.name)).not.toContain('csi-snapshot-metadata');
    expect((off.find((o) => o.kind === 'CSIDriver')!.spec as { storageCapacity: boolean }).storageCapacity).toBe(
      false,
    );

    const devices = chartObjects(
      renderChart(CHART, {
        values: {
          pool: { dataDevice: '/dev/disk/by-id/data', metadataDevice: '/dev/disk/by-id/meta' },
          controller: { nodeSelector: { 'kubernetes.io/hostname': 'storage-1' }, extraArgs: ['--foo=1'] },
          node: { updateStrategy: 'RollingUpdate' },
          snapshotMetadata: { tls: { cert: 'Y2VydA==', key: 'a2V5', caBundle: 'Y2E=' } },
        },
      }),
    ) as K8sObject[];
    const dsts = devices.find((o) => o.kind === 'StatefulSet')!;
    const init = podSpec(dsts)!.initContainers![0];
    expect(init.args![0]).toContain('--data-device=/dev/thinpool/data --metadata-device=/dev/thinpool/metadata');
    expect(init.args![0]).not.toContain('--data-size');
    expect(podSpec(dsts)!.containers[0].args).toContain('--foo=1');
    expect((dsts.spec as { template: { spec: { nodeSelector: unknown } } }).template.spec.nodeSelector).toEqual({
      'kubernetes.io/hostname': 'storage-1',
    });
    expect(devices.find((o) => o.kind === 'DaemonSet')!.spec).toMatchObject({
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } },
    });
    expect(devices.find((o) => o.kind === 'Secret')?.metadata.name).toBe('thinpool-csi-snapshot-metadata-tls');
    expect(
      (devices.find((o) => o.kind === 'SnapshotMetadataService')!.spec as { caCert: string }).caCert,
    ).toBe('Y2E=');
  });

  // csi-provisioner < v5.3.0 and csi-snapshotter < v8.3.0 (csi-lib-utils < v0.21) crash on the
  // GET_SNAPSHOT capability (issue #23), so the chart may pass the flag only with newer pins.
  test('passes --advertise-get-snapshot only while its pinned provisioner and snapshotter are new enough', () => {
    const values = YAML.parse(fs.readFileSync(path.join(CHART, 'values.yaml'), 'utf8')) as {
      sidecars: Record<string, { image: string }>;
    };
    const version = (image: string): number[] => {
      const m = /:v(\d+)\.(\d+)\.(\d+)$/.exec(image);
      expect(m).not.toBeNull();
      return m!.slice(1).map(Number);
    };
    const atLeast = (have: number[], want: number[]): boolean => {
      const i = have.findIndex((n, k) => n !== want[k]);
      return i < 0 || have[i] > want[i];
    };
    const newEnough =
      atLeast(version(values.sidecars.provisioner.image), [5, 3, 0]) &&
      atLeast(version(values.sidecars.snapshotter.image), [8, 3, 0]);
    const thinpoolArgs = (objects: K8sObject[]) =>
      podSpec(objects.find((o) => o.kind === 'StatefulSet')!)!.containers.find((c) => c.name === 'thinpool')!.args;
    expect(thinpoolArgs(chartObjs)?.includes('--advertise-get-snapshot')).toBe(newEnough);
    const off = chartObjects(renderChart(CHART, { values: { controller: { advertiseGetSnapshot: false } } }));
    expect(thinpoolArgs(off as K8sObject[])).not.toContain('--advertise-get-snapshot');
  });

  test('NOTES.txt renders and warns about the unpinned controller and the missing CA', () => {
    expect(chart.notes).toContain('kubectl -n thinpool-csi get statefulset');
    expect(chart.notes).toContain('controller.nodeSelector is empty');
    expect(chart.notes).toContain('snapshotMetadata.tls.caBundle is empty');
  });
});

describe('values.schema.json', () => {
  const schema = JSON.parse(fs.readFileSync(path.join(CHART, 'values.schema.json'), 'utf8')) as object;
  const values = YAML.parse(fs.readFileSync(path.join(CHART, 'values.yaml'), 'utf8')) as Record<string, unknown>;
  const ajv = new Ajv({ allErrors: true, strict: false });
  const validate = ajv.compile(schema);

  test('values.yaml validates', () => {
    expect(validate(values) ? 'valid' : ajv.errorsText(validate.errors)).toBe('valid');
  });

  test.each([
    ['a port as a string', { controller: { nbd: { port: '10809' } } }, /port/],
    ['a boolean as a string', { capacityTracking: { enabled: 'yes' } }, /enabled/],
    ['a size without a number', { pool: { dataSize: 'big' } }, /dataSize/],
    ['an unknown attach method', { node: { attachMethod: 'iscsi' } }, /attachMethod/],
    ['a misspelt key', { pool: { dataSzie: '1G' } }, /additional/],
    ['an image without a tag', { sidecars: { attacher: { image: 'registry.k8s.io/sig-storage/csi-attacher' } } }, /image/],
  ])('rejects %s', (_what, override, message) => {
    expect(validate(mergeValues(values, override))).toBe(false);
    expect(ajv.errorsText(validate.errors)).toMatch(message);
  });
});

describe('template-subset renderer', () => {
  const context: RenderContext = {
    Values: { a: { b: 'x', list: ['p', 'q'], empty: [], n: 0, m: { k: 'v' } }, on: true, off: false },
    Release: { Name: 'rel', Namespace: 'ns', Service: 'Helm' },
    Chart: { Name: 'c', Version: '1.0.0', AppVersion: '2.0.0' },
  };
  const render = (t: string) => renderTemplate(t, context);

  test.each([
    ['{{ .Values.a.b }}-{{ .Release.Name }}.{{ .Release.Namespace }}@{{ .Chart.AppVersion }}', 'x-rel.ns@2.0.0'],
    ['{{ .Values.missing | default "d" }} {{ .Values.a.b | default "d" }}', 'd x'],
    ['{{ .Values.a.b | quote }}', '"x"'],
    ['a\n{{- if .Values.on }}\nyes\n{{- else }}\nno\n{{- end }}', 'a\nyes'],
    ['{{ if .Values.off }}1{{ else if .Values.a.n }}2{{ else }}3{{ end }}', '3'],
    ['{{ if and .Values.on (not .Values.off) }}ok{{ end }}', 'ok'],
    ['{{- range .Values.a.list }}[{{ . }}]{{- end }}', '[p][q]'],
    ['{{ range .Values.a.empty }}x{{ else }}none{{ end }}', 'none'],
    ['{{- with .Values.a.m }}{{ .k }}{{ $.Release.Name }}{{ end }}', 'vrel'],
    ['k:{{ toYaml .Values.a.m | nindent 2 }}', 'k:\n  k: v'],
    ['{{ printf "%s-%s" .Release.Name "x" }}', 'rel-x'],
    ['{{/* a comment */}}z', 'z'],
  ])('%s', (template, expected) => {
    expect(render(template)).toBe(expected);
  });

  test('refuses what it does not implement', () => {
    expect(() => render('{{ include "x" . }}')).toThrow(/unsupported/);
    expect(() => render('{{ .Values.a.b | upper }}')).toThrow(/unsupported function upper/);
    expect(() => render('{{ if .Values.on }}x')).toThrow(/missing \{\{ end \}\}/);
  });
});
