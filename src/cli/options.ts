// Options several commands share, described once.
export const jsonOption = { type: 'boolean', default: false, describe: 'print JSON' } as const;
export const poolArg = { type: 'string', demandOption: true, describe: 'pool directory' } as const;
