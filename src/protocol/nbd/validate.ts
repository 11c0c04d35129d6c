// Which requests a server must refuse, and with which errno, before touching any data.
// Modelled on what the spec requires and what nbdkit answers (docs/nbd.md):
// EINVAL for bad flags and out-of-range reads, trims and block status; ENOSPC for
// writes past the end; EPERM for writes to a read-only export.

import { Command, CommandFlag, COMMAND_FLAGS_KNOWN, Errno } from './constants.js';
import type { NbdRequest } from './request-decoder.js';

export interface RequestContext {
  sizeBytes: number;
  readOnly: boolean;
  structuredReplies: boolean;
  allocationSelected: boolean;
  payloadBytesMax: number;
}

/** Flags each command accepts. FUA is accepted everywhere, as clients send it there. */
const FLAGS_ALLOWED: Record<number, number> = {
  [Command.READ]: CommandFlag.FUA | CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: CommandFlag.FUA,
  [Command.FLUSH]: CommandFlag.FUA,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

export function checkRequest(request: NbdRequest, context: RequestContext): Errno {
  const allowed = FLAGS_ALLOWED[request.type];
  if (allowed === undefined) return Errno.EINVAL;
  if ((request.flags & ~COMMAND_FLAGS_KNOWN) !== 0 || (request.flags & ~allowed) !== 0) return Errno.EINVAL;
  if ((request.flags & CommandFlag.DF) !== 0 && !context.structuredReplies) return Errno.EINVAL;

  const end = request.offset + request.length;
  const inRange = end <= context.sizeBytes;
  switch (request.type) {
    case Command.READ:
      if (request.length === 0 || request.length > context.payloadBytesMax) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.EINVAL;
    case Command.WRITE:
      if (context.readOnly) return Errno.EPERM;
      if (request.payloadDiscarded || request.length === 0) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.ENOSPC;
    case Command.WRITE_ZEROES:
      if (context.readOnly) return Errno.EPERM;
      if (request.length === 0) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.ENOSPC;
    case Command.TRIM:
      if (context.readOnly) return Errno.EPERM;
      if (request.length === 0) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.EINVAL;
    case Command.CACHE:
      if (request.length === 0) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.EINVAL;
    case Command.BLOCK_STATUS:
      if (!context.allocationSelected) return Errno.EINVAL;
      if (request.length === 0) return Errno.EINVAL;
      return inRange ? Errno.OK : Errno.EINVAL;
    case Command.FLUSH:
      // The spec has clients send zero offset and length; nbdkit refuses anything else.
      return request.offset === 0 && request.length === 0 ? Errno.OK : Errno.EINVAL;
    case Command.DISC:
      return Errno.OK;
    default:
      return Errno.EINVAL;
  }
}
