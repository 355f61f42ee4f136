// The backup client's CSI codecs: proto/csi.json is csi.proto compiled (not stale), and messages
// encode and decode exactly as @grpc/proto-loader (what the driver's server uses) does.
import fs from 'node:fs';
import path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { compileCsiProto, loadCsiRoot, serviceClient } from '../../src/backup/csi-services';

const protoDir = path.resolve(__dirname, '../../proto');

test('proto/csi.json matches proto/csi.proto (else: npm run build && node scripts/csi-proto-json.js)', () => {
  const compiled = JSON.parse(
    JSON.stringify(compileCsiProto(path.join(protoDir, 'csi.proto')).toJSON()),
  ) as object;
  const stored = JSON.parse(fs.readFileSync(path.join(protoDir, 'csi.json'), 'utf8')) as object;
  // Only csi.v1 matters: google.protobuf's descriptor types come out with other field-name cases
  // depending on whether proto-loader registered its copy first.
  const csi = (json: object) => (json as { nested: { csi: object } }).nested.csi;
  expect(csi(stored)).toEqual(csi(compiled));
});

test('codecs agree with proto-loader in both directions', () => {
  const root = loadCsiRoot(path.join(protoDir, 'csi.json'));
  const ours = serviceClient(root, 'Controller').service;
  const theirs = protoLoader.loadSync(path.join(protoDir, 'csi.proto'), {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  })['csi.v1.Controller'] as protoLoader.ServiceDefinition;
  const request = {
    name: 'v',
    capacity_range: { required_bytes: 5 * 2 ** 40, limit_bytes: 0 },
    volume_capabilities: [{ block: {}, access_mode: { mode: 'SINGLE_NODE_READER_ONLY' } }],
    parameters: { a: 'b' },
    volume_content_source: { snapshot: { snapshot_id: 's' } },
  };
  const bytes = ours.CreateVolume.requestSerialize(request);
  expect(bytes.equals(theirs.CreateVolume.requestSerialize(request))).toBe(true);
  expect(ours.CreateVolume.requestDeserialize(bytes)).toEqual(theirs.CreateVolume.requestDeserialize(bytes));
  const reply = { volume: { volume_id: 'x', capacity_bytes: 2 ** 33, volume_context: { k: 'v' } } };
  const replyBytes = theirs.CreateVolume.responseSerialize(reply);
  expect(ours.CreateVolume.responseDeserialize(replyBytes)).toEqual(
    theirs.CreateVolume.responseDeserialize(replyBytes),
  );
});
