// Numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). Names follow the
// spec with the NBD_ prefix dropped.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** IHAVEOPT(8) + option(4) + length(4). */
export const OPTION_HEADER_BYTES = 16;
/** NBDMAGIC(8) + IHAVEOPT(8) + handshake flags(2). */
export const GREETING_BYTES = 18;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERROR_BIT = 2 ** 31;
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERROR_BIT + 1,
  ERR_POLICY: ERROR_BIT + 2,
  ERR_INVALID: ERROR_BIT + 3,
  ERR_PLATFORM: ERROR_BIT + 4,
  ERR_TLS_REQD: ERROR_BIT + 5,
  ERR_UNKNOWN: ERROR_BIT + 6,
  ERR_SHUTDOWN: ERROR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: ERROR_BIT + 8,
  ERR_TOO_BIG: ERROR_BIT + 9,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags. */
export const TxFlag = {
  HAS_FLAGS: 0x1,
  READ_ONLY: 0x2,
  SEND_FLUSH: 0x4,
  SEND_FUA: 0x8,
  ROTATIONAL: 0x10,
  SEND_TRIM: 0x20,
  SEND_WRITE_ZEROES: 0x40,
  SEND_DF: 0x80,
  CAN_MULTI_CONN: 0x100,
  SEND_RESIZE: 0x200,
  SEND_CACHE: 0x400,
  SEND_FAST_ZERO: 0x800,
} as const;

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CommandFlag = {
  FUA: 0x1,
  NO_HOLE: 0x2,
  DF: 0x4,
  REQ_ONE: 0x8,
  FAST_ZERO: 0x10,
} as const;
export const COMMAND_FLAGS_KNOWN = 0x1f;

export const ReplyFlag = { DONE: 0x1 } as const;

export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** errno values on the wire (Linux numbering, fixed by the spec). */
export const Errno = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type Errno = (typeof Errno)[keyof typeof Errno];

export const STATE_HOLE = 0x1;
export const STATE_ZERO = 0x2;

export const BASE_ALLOCATION = 'base:allocation';
