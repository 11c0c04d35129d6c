// CRC32C (Castagnoli) over one buffer or several in sequence. Log entries and peer frames
// are checksummed with it before they are written and verified after they are read.
//
// This module computes it in JavaScript (slicing by 8, a few hundred MB/s), so that the
// codecs and the cores load without the native addon (the simulator, the unit tests of
// pure code). Loading the addon (src/io/native.ts) installs its version, which uses the
// SSE4.2 instruction where the CPU has it and is what a node runs: both give the same
// values (test/unit/log-entry.test.ts).

/** One step of a CRC32C computation: `crc` is the value of the bytes before `data` (0 at the start). */
export type Crc32cFunction = (data: Buffer, crc: number) => number;

const POLYNOMIAL = 0x82f63b78;
/** tables[k][n]: the CRC of byte n followed by k zero bytes (slicing by 8). */
const tables: Uint32Array[] = Array.from({ length: 8 }, () => new Uint32Array(256));
{
  const first = tables[0] as Uint32Array;
  for (let n = 0; n < 256; n += 1) {
    let crc = n;
    for (let bit = 0; bit < 8; bit += 1) crc = crc & 1 ? (crc >>> 1) ^ POLYNOMIAL : crc >>> 1;
    first[n] = crc >>> 0;
  }
  for (let n = 0; n < 256; n += 1) {
    let crc = first[n] as number;
    for (let k = 1; k < 8; k += 1) {
      crc = ((first[crc & 0xff] as number) ^ (crc >>> 8)) >>> 0;
      (tables[k] as Uint32Array)[n] = crc;
    }
  }
}

/** The JavaScript version (table-driven), whatever is installed. */
export function crc32cSoftware(data: Buffer, seed = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = tables as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let crc = ~seed >>> 0;
  let at = 0;
  const end8 = data.length - (data.length % 8);
  while (at < end8) {
    const low = (crc ^ ((data[at] as number) | ((data[at + 1] as number) << 8) | ((data[at + 2] as number) << 16) | ((data[at + 3] as number) << 24))) >>> 0;
    const high = ((data[at + 4] as number) | ((data[at + 5] as number) << 8) | ((data[at + 6] as number) << 16) | ((data[at + 7] as number) << 24)) >>> 0;
    crc =
      ((t7[low & 0xff] as number) ^
        (t6[(low >>> 8) & 0xff] as number) ^
        (t5[(low >>> 16) & 0xff] as number) ^
        (t4[low >>> 24] as number) ^
        (t3[high & 0xff] as number) ^
        (t2[(high >>> 8) & 0xff] as number) ^
        (t1[(high >>> 16) & 0xff] as number) ^
        (t0[high >>> 24] as number)) >>>
      0;
    at += 8;
  }
  while (at < data.length) {
    crc = ((t0[(crc ^ (data[at] as number)) & 0xff] as number) ^ (crc >>> 8)) >>> 0;
    at += 1;
  }
  return ~crc >>> 0;
}

let implementation: Crc32cFunction = crc32cSoftware;

/** Installs a faster implementation (the native addon's, when it loads). */
export function useCrc32c(fn: Crc32cFunction): void {
  implementation = fn;
}

export function crc32c(data: Buffer | readonly Buffer[], seed = 0): number {
  if (Buffer.isBuffer(data)) return implementation(data, seed);
  let crc = seed;
  for (const buffer of data) crc = implementation(buffer, crc);
  return crc;
}
