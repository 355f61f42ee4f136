import path from 'node:path';
import { RunToolResult, runTool } from './tools';

export const CLI = path.resolve(__dirname, '../../dist/cli/main.js');

/** Runs the built `thinpool` command (jest's global setup builds it). */
export function thinpool(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<RunToolResult> {
  return runTool(process.execPath, [CLI, ...args], { env: { ...process.env, ...opts.env } });
}
