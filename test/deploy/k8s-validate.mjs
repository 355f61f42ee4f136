// Validates Kubernetes objects against the API schemas of the `kubernetes-models` package (an ES
// module, so it runs in its own node process, outside jest's CommonJS world). Reads a JSON array
// of objects on stdin; prints a JSON array: null (valid), or an error message, one per object.
import { Buffer } from 'node:buffer';
import process from 'node:process';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const objects = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const results = [];
for (const object of objects) {
  const apiVersion = String(object.apiVersion ?? '');
  const modulePath = `kubernetes-models/${apiVersion}`;
  try {
    const models = await import(modulePath);
    const Model = models[object.kind];
    if (!Model) {
      results.push(`no schema for ${apiVersion} ${object.kind}`);
      continue;
    }
    new Model(object).validate();
    results.push(null);
  } catch (e) {
    results.push(e instanceof Error ? e.message : String(e));
  }
}
process.stdout.write(JSON.stringify(results));
