// Public surface of the NBD exporter: a server, its export definitions, and TLS settings.
export { NbdServer, type NbdServerOptions, type ListenAddress, type BoundAddress } from './server';
export {
  ExportRegistry,
  type AccessRule,
  type ContextExtent,
  type ExportDefinition,
  type MetaContextProvider,
} from './exports';
export type { TlsMode, TlsSettings } from './tls';
export type { ReadIntoDevice, WriteVectoredDevice } from './device-io';
