// Byte sizes as operators write them in the cluster file: a plain integer (bytes) or a
// number with a binary (KiB, MiB, GiB, TiB) or decimal (KB, MB, GB, TB) suffix.

const units: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TIB: 1024 ** 4,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
  TB: 1000 ** 4,
};

/** Parses a size; returns undefined when the text is not a whole number of bytes. */
export function parseSizeBytes(text: string | number): number | undefined {
  if (typeof text === 'number') {
    return Number.isSafeInteger(text) && text >= 0 ? text : undefined;
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (match === null) return undefined;
  const unit = units[(match[2] ?? '').toUpperCase()];
  if (unit === undefined) return undefined;
  const bytes = Number(match[1]) * unit;
  return Number.isSafeInteger(bytes) && bytes >= 0 ? bytes : undefined;
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
