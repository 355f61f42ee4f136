// Sends the project's log lines to the per-test buffer of test/jest-environment.js instead of
// the console, where jest would print them for passing tests too.
import { Writable } from 'node:stream';
import winston from 'winston';
import { log } from '../src/log';

const lines = (globalThis as { __testLogLines?: string[] }).__testLogLines ?? [];

log.clear();
log.add(
  new winston.transports.Stream({
    stream: new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    }),
  }),
);
