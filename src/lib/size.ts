// Byte sizes as operators write them in the cluster file: a plain integer (bytes) or a
// number with a binary (KiB, MiB, GiB, TiB, PiB) or decimal (KB, MB, GB, TB, PB) suffix.
// Arithmetic is exact (BigInt), so "4.1MB" is 4100000 bytes and "1.5KiB" 1536.

const units: Record<string, bigint> = {
  '': 1n,
  B: 1n,
  K: 1024n,
  KIB: 1024n,
  M: 1024n ** 2n,
  MIB: 1024n ** 2n,
  G: 1024n ** 3n,
  GIB: 1024n ** 3n,
  T: 1024n ** 4n,
  TIB: 1024n ** 4n,
  P: 1024n ** 5n,
  PIB: 1024n ** 5n,
  KB: 1000n,
  MB: 1000n ** 2n,
  GB: 1000n ** 3n,
  TB: 1000n ** 4n,
  PB: 1000n ** 5n,
};

/** Parses a size; returns undefined when the text is not a whole number of bytes. */
export function parseSizeBytes(text: string | number): number | undefined {
  if (typeof text === 'number') {
    return Number.isSafeInteger(text) && text >= 0 ? text : undefined;
  }
  const match = /^\s*(\d{1,30})(?:\.(\d{1,30}))?\s*([A-Za-z]*)\s*$/.exec(text);
  if (match === null) return undefined;
  const unit = units[(match[3] ?? '').toUpperCase()];
  if (unit === undefined) return undefined;
  const fraction = match[2] ?? '';
  const scaled = BigInt((match[1] ?? '0') + fraction) * unit;
  const divisor = 10n ** BigInt(fraction.length);
  if (scaled % divisor !== 0n) return undefined;
  const bytes = scaled / divisor;
  return bytes <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(bytes) : undefined;
}

export function formatBytes(bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let index = 0;
  while (value >= 1024 && index < names.length - 1 && value % 1024 === 0) {
    value /= 1024;
    index += 1;
  }
  return `${value}${names[index]}`;
}
