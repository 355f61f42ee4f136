import winston from 'winston';

// JSON for machines (pipes, containers), colourful lines for people at a terminal.
const human = process.stderr.isTTY && process.env.THINPOOL_LOG_FORMAT !== 'json';

export const log = winston.createLogger({
  level: process.env.THINPOOL_LOG_LEVEL ?? (process.env.JEST_WORKER_ID ? 'warn' : 'info'),
  format: human
    ? winston.format.combine(
        winston.format.colorize(),
        winston.format.timestamp({ format: 'HH:mm:ss.SSS' }),
        winston.format.printf(({ timestamp, level, message, component, ...meta }) => {
          const rest = Object.keys(meta).length ? ' ' + JSON.stringify(meta) : '';
          return `${timestamp} ${level} ${component ? `[${component}] ` : ''}${message}${rest}`;
        }),
      )
    : winston.format.combine(winston.format.timestamp(), winston.format.json()),
  transports: [
    new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug', 'verbose'] }),
  ],
});

/** A child logger that tags every line with the component that wrote it. */
export function logger(component: string): winston.Logger {
  return log.child({ component });
}
