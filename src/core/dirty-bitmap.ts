// A per-peer dirty bitmap (docs/operations.md, mirroring): one bit per region of the volume, set for
// every region written that the peer may lack. The primary marks it while the peer is
// away (and, when it goes away, for the entries it had not acknowledged), clears it
// when the peer has caught up, and writes it to disk at every consistency point, so a
// primary that crashes during an outage still knows what the peer needs. A bit set
// wrongly costs a region resent; a bit missing would lose a write, so marking errs on
// the side of too many.
//
// File format (`<dataDir>/mirror/<volume>.<peer>.bitmap`, replaced atomically), big-endian:
//   magic u32 'BMDB', version u16 = 1, reserved u16 = 0, regionBytes u32, regions u32,
//   volume size u64, crc32c u32 over the 24 bytes before it and the bits, reserved u32 = 0,
//   then the bits (region i is bit i % 8 of byte i / 8).

import { assert } from '../lib/assert.js';
import { crc32c } from '../lib/crc32c.js';

const MAGIC = 0x424d4442; // 'BMDB'
const VERSION = 1;
const HEADER_BYTES = 32;

export class DirtyBitmap {
  private readonly bits: Buffer;
  readonly regions: number;
  private dirty = 0;

  constructor(
    readonly sizeBytes: number,
    readonly regionBytes: number,
    bits?: Buffer,
  ) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, 'volume size');
    assert(Number.isSafeInteger(regionBytes) && regionBytes > 0, 'region size');
    this.regions = Math.ceil(sizeBytes / regionBytes);
    this.bits = bits ?? Buffer.alloc(Math.ceil(this.regions / 8));
    assert(this.bits.length === Math.ceil(this.regions / 8), 'bitmap length');
    for (let region = 0; region < this.regions; region += 1) if (this.isDirty(region)) this.dirty += 1;
  }

  /** Marks every region that [offset, offset + lengthBytes) touches. */
  mark(offset: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    assert(offset >= 0 && offset + lengthBytes <= this.sizeBytes, `range ${offset}+${lengthBytes} outside the volume`);
    const last = Math.floor((offset + lengthBytes - 1) / this.regionBytes);
    for (let region = Math.floor(offset / this.regionBytes); region <= last; region += 1) {
      const byte = region >> 3;
      const bit = 1 << (region & 7);
      const value = this.bits[byte] ?? 0;
      if ((value & bit) === 0) {
        this.bits[byte] = value | bit;
        this.dirty += 1;
      }
    }
  }

  /** Adds every region dirty in `other` (a bitmap of the same geometry). */
  include(other: DirtyBitmap): void {
    assert(other.sizeBytes === this.sizeBytes && other.regionBytes === this.regionBytes, 'bitmaps of different geometry');
    for (let index = 0; index < this.bits.length; index += 1) {
      const before = this.bits[index] ?? 0;
      const after = before | (other.bits[index] ?? 0);
      if (after === before) continue;
      this.bits[index] = after;
      this.dirty += bitCount(after) - bitCount(before);
    }
  }

  /** A copy (the same regions dirty). */
  clone(): DirtyBitmap {
    return new DirtyBitmap(this.sizeBytes, this.regionBytes, Buffer.from(this.bits));
  }

  markAll(): void {
    this.mark(0, this.sizeBytes);
  }

  clearAll(): void {
    this.bits.fill(0);
    this.dirty = 0;
  }

  /** Clears one region (the peer has made it durable). */
  clear(region: number): void {
    if (!this.isDirty(region)) return;
    this.bits[region >> 3] = (this.bits[region >> 3] ?? 0) & ~(1 << (region & 7));
    this.dirty -= 1;
  }

  /** The first dirty region at or after `from`, or -1. */
  nextDirty(from: number): number {
    for (let region = Math.max(0, from); region < this.regions; region += 1) {
      // Whole clean bytes are skipped at once.
      if ((region & 7) === 0 && (this.bits[region >> 3] ?? 0) === 0) {
        region += 7;
        continue;
      }
      if (this.isDirty(region)) return region;
    }
    return -1;
  }

  isDirty(region: number): boolean {
    return ((this.bits[region >> 3] ?? 0) & (1 << (region & 7))) !== 0;
  }

  get dirtyRegions(): number {
    return this.dirty;
  }

  /** Bytes of the volume in dirty regions (the last region may be short). */
  get dirtyBytes(): number {
    let bytes = this.dirty * this.regionBytes;
    const lastRegion = this.regions - 1;
    if (this.isDirty(lastRegion)) bytes -= this.regions * this.regionBytes - this.sizeBytes;
    return bytes;
  }

  encode(): Buffer {
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32BE(MAGIC, 0);
    header.writeUInt16BE(VERSION, 4);
    header.writeUInt16BE(0, 6);
    header.writeUInt32BE(this.regionBytes, 8);
    header.writeUInt32BE(this.regions, 12);
    header.writeBigUInt64BE(BigInt(this.sizeBytes), 16);
    header.writeUInt32BE(crc32c([header.subarray(0, 24), this.bits]), 24);
    return Buffer.concat([header, this.bits]);
  }

  /**
   * Reads a stored bitmap for a volume of `sizeBytes` with `regionBytes` regions. A file
   * that is damaged, or made for another size or region size, says nothing reliable:
   * null, and the caller must assume every region dirty.
   */
  static decode(data: Buffer, sizeBytes: number, regionBytes: number): DirtyBitmap | null {
    if (data.length < HEADER_BYTES) return null;
    if (data.readUInt32BE(0) !== MAGIC || data.readUInt16BE(4) !== VERSION || data.readUInt16BE(6) !== 0) return null;
    const regions = Math.ceil(sizeBytes / regionBytes);
    if (data.readUInt32BE(8) !== regionBytes || data.readUInt32BE(12) !== regions) return null;
    if (data.readBigUInt64BE(16) !== BigInt(sizeBytes) || data.readUInt32BE(28) !== 0) return null;
    const bits = data.subarray(HEADER_BYTES);
    if (bits.length !== Math.ceil(regions / 8)) return null;
    if (crc32c([data.subarray(0, 24), bits]) !== data.readUInt32BE(24)) return null;
    return new DirtyBitmap(sizeBytes, regionBytes, Buffer.from(bits));
  }
}

function bitCount(byte: number): number {
  let count = 0;
  for (let value = byte; value !== 0; value &= value - 1) count += 1;
  return count;
}
