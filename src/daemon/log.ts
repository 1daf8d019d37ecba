// Structured logs (pino, JSON lines on stderr). Level from BULKHEAD_LOG_LEVEL (default info).
import { pino, type Logger } from 'pino';

export function createLogger(name: string): Logger {
  return pino(
    { name, level: process.env.BULKHEAD_LOG_LEVEL ?? 'info', base: { pid: process.pid } },
    pino.destination({ fd: 2, sync: true }),
  );
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
