// The Disk port: a fixed-size byte array with durable flush, hole punching and an
// allocation map. The node uses FileDisk (a raw image file); tests use MemoryDisk. Both pass the same compliance suite (test/unit/disk-compliance.test.ts).

export interface DiskExtent {
  lengthBytes: number;
  /**
   * True when the range reads as zeroes and the disk reports it as not holding data.
   * False means "may hold data". A range zeroed by zeroRange() may be reported either
   * way: ext4 keeps it as an allocated but unwritten extent, which SEEK_DATA calls a
   * hole until its pages are cached.
   */
  hole: boolean;
}

/** Reads, writes, punchHole and zeroRange accept a zero length and then do nothing. */
export interface Disk {
  readonly sizeBytes: number;
  /** Fills `buffer` from `offset`; the range must lie inside the disk. */
  read(buffer: Buffer, offset: number): Promise<void>;
  write(buffer: Buffer, offset: number): Promise<void>;
  /** Writes the buffers back to back from `offset` (one vectored write where possible). */
  writev(buffers: readonly Buffer[], offset: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  sync(): Promise<void>;
  /** Deallocates a range so that it reads as zeroes; false if the disk cannot. */
  punchHole(offset: number, lengthBytes: number): Promise<boolean>;
  /** Zeroes a range and keeps it allocated; false if the disk cannot do it without writing. */
  zeroRange(offset: number, lengthBytes: number): Promise<boolean>;
  /**
   * Whether punchHole (noHole false) or zeroRange (noHole true) works without writing
   * zeroes, as far as the disk knows; asked before a FAST_ZERO request changes anything.
   */
  canZeroFast(noHole: boolean): boolean;
  /**
   * Allocation from `offset`, covering at least one byte and at most `lengthBytes`, in at
   * most `extentsMax` extents.
   */
  extents(offset: number, lengthBytes: number, extentsMax: number): Promise<DiskExtent[]>;
  close(): Promise<void>;
}
