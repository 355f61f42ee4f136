import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CHART = path.join(ROOT, 'charts', 'thinpool-csi');
export const DEPLOY = path.join(ROOT, 'deploy');

export type K8sObject = Record<string, unknown> & {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
};

export function parseManifests(text: string, where: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`${where}: ${doc.errors[0].message}`);
    const value = doc.toJS() as K8sObject | null;
    if (value) out.push(value);
  }
  return out;
}

export function yamlFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.yaml'))
    .sort()
    .map((n) => path.join(dir, n));
}

/** Runs the kubernetes-models validator (an ES module) on objects; one error or null each. */
export function validateWithKubernetesModels(objects: object[]): (string | null)[] {
  const result = spawnSync(process.execPath, [path.join(__dirname, 'k8s-validate.mjs')], {
    input: JSON.stringify(objects),
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (result.status !== 0) throw new Error(`k8s-validate.mjs failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as (string | null)[];
}

export const key = (o: K8sObject): string => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
