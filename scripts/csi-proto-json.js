// Writes proto/csi.json from proto/csi.proto (run after `npm run build`): the precompiled types
// the backup tool's CSI client loads. test/backup/csi-services.test.ts fails when it is stale.
const fs = require('node:fs');
const path = require('node:path');
const { compileCsiProto } = require('../dist/backup/csi-services');

const root = path.resolve(__dirname, '..');
const json = compileCsiProto(path.join(root, 'proto/csi.proto')).toJSON();
fs.writeFileSync(path.join(root, 'proto/csi.json'), JSON.stringify(json) + '\n');
