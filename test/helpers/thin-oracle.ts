import { ThinToolVersion, runTool, thinTool } from './tools';

export interface ThinCheckResult {
  version: ThinToolVersion;
  code: number;
  output: string;
}

/** Runs thin_check (0.9 by default flags leaks as errors too) and returns its verdict. */
export async function thinCheck(
  metadata: string,
  version: ThinToolVersion,
  extra: string[] = [],
): Promise<ThinCheckResult> {
  const r = await runTool(thinTool('thin_check', version), [...extra, metadata]);
  return { version, code: r.code, output: r.stdout + r.stderr };
}

/** Both thin_check versions; each result carries its output so a failing assertion shows why. */
export async function thinCheckBoth(metadata: string, extra: string[] = []): Promise<ThinCheckResult[]> {
  return Promise.all([thinCheck(metadata, '0.9', extra), thinCheck(metadata, '1.1', extra)]);
}

export async function thinDump(metadata: string, args: string[] = []): Promise<string> {
  const r = await runTool(thinTool('thin_dump', '0.9'), [...args, metadata]);
  if (r.code !== 0) throw new Error(`thin_dump failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

export async function thinRestore(xmlFile: string, metadata: string): Promise<void> {
  const r = await runTool(thinTool('thin_restore', '0.9'), ['-i', xmlFile, '-o', metadata]);
  if (r.code !== 0) throw new Error(`thin_restore failed (${r.code}): ${r.stderr}`);
}

/** Normalises thin_dump XML for comparison: trims lines and drops blank ones. */
export function normaliseXml(xml: string): string {
  return xml
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join('\n');
}
