// A small structured logger: one JSON object per line on stderr, so operators can read
// it and tools (and tests) can parse it. Fields are flat; `child` adds context fields.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const levelRank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface LogSink {
  write(line: string): void;
}

export class Logger {
  constructor(
    private readonly sink: LogSink,
    private readonly level: LogLevel = 'info',
    private readonly context: LogFields = {},
    private readonly now: () => number = Date.now,
  ) {}

  child(fields: LogFields): Logger {
    return new Logger(this.sink, this.level, { ...this.context, ...fields }, this.now);
  }

  enabled(level: LogLevel): boolean {
    return levelRank[level] >= levelRank[this.level];
  }

  debug(msg: string, fields?: LogFields): void {
    this.emit('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.emit('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.emit('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.emit('error', msg, fields);
  }

  private emit(level: LogLevel, msg: string, fields: LogFields | undefined): void {
    if (!this.enabled(level)) return;
    const record = { time: new Date(this.now()).toISOString(), level, msg, ...this.context, ...fields };
    this.sink.write(JSON.stringify(record) + '\n');
  }
}

export function parseLogLevel(text: string | undefined): LogLevel {
  return text === 'debug' || text === 'warn' || text === 'error' ? text : 'info';
}
