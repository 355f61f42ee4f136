// gRPC clients for the CSI services the backup tool calls, built from protobufjs types. The
// types come from proto/csi.json, csi.proto compiled once (`node scripts/csi-proto-json.js`,
// checked by test/backup/csi-services.test.ts): reading that JSON costs ~20 ms where parsing
// csi.proto and its descriptor.proto import through @grpc/proto-loader cost 100–200 ms of every
// backup run, more than a small incremental spends reading data.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';

/** Same conversions as @grpc/proto-loader with keepCase, longs: Number, enums: String, defaults, oneofs. */
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, oneofs: true };

/** csi.proto parsed by protobufjs (google/protobuf imports from protobufjs's own copies). */
export function compileCsiProto(protoFile: string): protobuf.Root {
  const root = new protobuf.Root();
  const googleDir = path.dirname(require.resolve('protobufjs/package.json'));
  root.resolvePath = (origin, target) =>
    target.startsWith('google/protobuf/')
      ? path.join(googleDir, target)
      : protobuf.util.path.resolve(origin, target);
  return root.loadSync(protoFile, { keepCase: true });
}

export function loadCsiRoot(jsonFile: string): protobuf.Root {
  return protobuf.Root.fromJSON(JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as protobuf.INamespace);
}

/** proto/thinpool.proto (the driver's own RPCs): small, no imports, parsed directly. */
export function loadAdminRoot(protoFile: string): protobuf.Root {
  return new protobuf.Root().loadSync(protoFile, { keepCase: true });
}

/** A client constructor for `<pkg>.<service>`, with the message codecs proto-loader would make. */
export function serviceClient(
  root: protobuf.Root,
  service: string,
  pkg = 'csi.v1',
): grpc.ServiceClientConstructor {
  const definition: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const method of root.lookupService(`${pkg}.${service}`).methodsArray) {
    method.resolve();
    const request = method.resolvedRequestType!;
    const response = method.resolvedResponseType!;
    definition[method.name] = {
      path: `/${pkg}.${service}/${method.name}`,
      requestStream: method.requestStream === true,
      responseStream: method.responseStream === true,
      requestSerialize: (value: object) => Buffer.from(request.encode(request.fromObject(value)).finish()),
      requestDeserialize: (bytes: Buffer) => request.toObject(request.decode(bytes), TO_OBJECT),
      responseSerialize: (value: object) => Buffer.from(response.encode(response.fromObject(value)).finish()),
      responseDeserialize: (bytes: Buffer) => response.toObject(response.decode(bytes), TO_OBJECT),
      originalName: method.name,
    };
  }
  return grpc.makeGenericClientConstructor(definition, service);
}
