// Identity service: name, version, capabilities, readiness.
import { type DriverConfig, capabilitiesOf } from './config';
import { type OperationLocks, unary } from './handler';
import type { IdentityHandlers } from './types';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const VERSION = (require('../../package.json') as { version: string }).version;

export function identityHandlers(
  config: DriverConfig,
  locks: OperationLocks,
  isReady: () => boolean,
): IdentityHandlers {
  return {
    GetPluginInfo: unary(locks, 'GetPluginInfo', {
      run: async () => ({
        name: config.driverName,
        vendor_version: VERSION,
        manifest: { role: config.role },
      }),
    }),
    GetPluginCapabilities: unary(locks, 'GetPluginCapabilities', {
      run: async () => ({ capabilities: capabilitiesOf(config).plugin }),
    }),
    Probe: unary(locks, 'Probe', { run: async () => ({ ready: { value: isReady() } }) }),
  };
}
