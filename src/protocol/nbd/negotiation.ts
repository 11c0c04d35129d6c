// The server side of NBD option haggling, as a pure state machine: decoded handshake
// messages go in, reply buffers and a verdict (continue, close, enter transmission)
// come out. It knows exports only through an ExportCatalog, so the node decides which
// volumes exist and which this node may serve.

import { assert } from '../../lib/assert.js';
import {
  BASE_ALLOCATION,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  Info,
  Option,
  Reply,
  TxFlag,
} from './constants.js';
import {
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
} from './encode.js';
import type { HandshakeMessage } from './handshake-decoder.js';

export interface ExportInfo {
  name: string;
  description: string;
  sizeBytes: number;
  readOnly: boolean;
}

export type ExportLookup =
  | { kind: 'ok'; export: ExportInfo }
  | { kind: 'unknown' }
  | { kind: 'refused'; message: string };

export interface ExportCatalog {
  /** Resolves a name ('' is the default export) to an export this node serves. */
  lookup(name: string): ExportLookup;
  list(): readonly { name: string; description: string }[];
}

export interface NegotiationLimits {
  optionCountMax: number;
  nameBytesMax: number;
  metaQueriesMax: number;
  blockSizeMinBytes: number;
  blockSizePreferredBytes: number;
  payloadBytesMax: number;
}

export interface TransmissionParams {
  export: ExportInfo;
  structuredReplies: boolean;
  /** Context id of base:allocation if the client selected it, else null. */
  allocationContextId: number | null;
  transmissionFlags: number;
}

export type NegotiationStep =
  | { kind: 'continue'; replies: Buffer[] }
  | { kind: 'close'; replies: Buffer[]; reason: string }
  | { kind: 'transmission'; replies: Buffer[]; params: TransmissionParams };

/** The id under which base:allocation is announced. Any u32 would do. */
export const ALLOCATION_CONTEXT_ID = 1;

const CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

export function transmissionFlagsFor(info: ExportInfo, structuredReplies: boolean): number {
  let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_CACHE;
  // Every connection to a volume shares one file and one flush, so a FLUSH on any
  // connection covers writes replied to on all of them.
  flags |= TxFlag.CAN_MULTI_CONN;
  if (structuredReplies) flags |= TxFlag.SEND_DF;
  if (info.readOnly) {
    flags |= TxFlag.READ_ONLY;
  } else {
    flags |= TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
  }
  return flags;
}

/** Reads length-prefixed fields of option data; any overrun marks the data invalid. */
class OptionReader {
  private at = 0;
  valid = true;
  constructor(private readonly data: Buffer) {}

  u32(): number {
    if (this.at + 4 > this.data.length) {
      this.valid = false;
      return 0;
    }
    const value = this.data.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }

  u16(): number {
    if (this.at + 2 > this.data.length) {
      this.valid = false;
      return 0;
    }
    const value = this.data.readUInt16BE(this.at);
    this.at += 2;
    return value;
  }

  string(lengthBytes: number): string {
    if (this.at + lengthBytes > this.data.length) {
      this.valid = false;
      return '';
    }
    const text = this.data.toString('utf8', this.at, this.at + lengthBytes);
    this.at += lengthBytes;
    return text;
  }

  get atEnd(): boolean {
    return this.at === this.data.length;
  }
}

export class Negotiation {
  private clientFlags: number | undefined;
  private optionCount = 0;
  private structuredReplies = false;
  /** The export for which base:allocation was selected, or null. */
  private metaExportName: string | null = null;
  private shuttingDown = false;

  constructor(
    private readonly catalog: ExportCatalog,
    private readonly limits: NegotiationLimits,
  ) {}

  /** From now on options get ERR_SHUTDOWN. */
  setShuttingDown(): void {
    this.shuttingDown = true;
  }

  step(message: HandshakeMessage): NegotiationStep {
    switch (message.kind) {
      case 'bad-magic':
        return { kind: 'close', replies: [], reason: 'bad option magic' };
      case 'client-flags':
        return this.onClientFlags(message.flags);
      case 'option-too-big':
        if (message.option === Option.EXPORT_NAME) {
          // EXPORT_NAME has no error reply; the client would read ours as export data.
          return { kind: 'close', replies: [], reason: 'export name too long' };
        }
        return this.countOption(message.option) ??
          this.reply(encodeOptionError(message.option, Reply.ERR_TOO_BIG, 'option data too large'));
      case 'option':
        return this.countOption(message.option) ?? this.onOption(message.option, message.data);
    }
  }

  private onClientFlags(flags: number): NegotiationStep {
    assert(this.clientFlags === undefined, 'client flags decoded twice');
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
      return { kind: 'close', replies: [], reason: `unknown client flags 0x${flags.toString(16)}` };
    }
    if ((flags & FLAG_C_FIXED_NEWSTYLE) === 0) {
      return { kind: 'close', replies: [], reason: 'client does not speak fixed newstyle' };
    }
    this.clientFlags = flags;
    return { kind: 'continue', replies: [] };
  }

  private countOption(option: number): NegotiationStep | undefined {
    this.optionCount += 1;
    if (this.optionCount > this.limits.optionCountMax) {
      return { kind: 'close', replies: [], reason: `more than ${this.limits.optionCountMax} options` };
    }
    if (this.shuttingDown && option !== Option.ABORT) {
      if (option === Option.EXPORT_NAME) return { kind: 'close', replies: [], reason: 'shutting down' };
      return this.reply(encodeOptionError(option, Reply.ERR_SHUTDOWN, 'server is shutting down'));
    }
    return undefined;
  }

  private reply(...replies: Buffer[]): NegotiationStep {
    return { kind: 'continue', replies };
  }

  private onOption(option: number, data: Buffer): NegotiationStep {
    switch (option) {
      case Option.EXPORT_NAME:
        return this.onExportName(data);
      case Option.ABORT:
        return { kind: 'close', replies: [encodeOptionReply(option, Reply.ACK)], reason: 'client aborted' };
      case Option.LIST:
        return this.onList(data);
      case Option.INFO:
      case Option.GO:
        return this.onInfoOrGo(option, data);
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) {
          return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'STRUCTURED_REPLY takes no data'));
        }
        if (this.structuredReplies) {
          return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'structured replies already negotiated'));
        }
        this.structuredReplies = true;
        return this.reply(encodeOptionReply(option, Reply.ACK));
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.onMetaContext(option, data);
      default:
        return this.reply(encodeOptionError(option, Reply.ERR_UNSUP, `option ${option} is not supported`));
    }
  }

  private onExportName(data: Buffer): NegotiationStep {
    if (data.length > this.limits.nameBytesMax) {
      return { kind: 'close', replies: [], reason: 'export name too long' };
    }
    const name = data.toString('utf8');
    const found = this.catalog.lookup(name);
    if (found.kind !== 'ok') {
      // EXPORT_NAME has no error reply: the only answer is to hang up.
      return { kind: 'close', replies: [], reason: `export "${name}" ${found.kind === 'unknown' ? 'unknown' : 'refused'}` };
    }
    const params = this.params(found.export);
    const noZeroes = ((this.clientFlags ?? 0) & FLAG_C_NO_ZEROES) !== 0;
    return {
      kind: 'transmission',
      replies: [encodeExportNameReply(found.export.sizeBytes, params.transmissionFlags, noZeroes)],
      params,
    };
  }

  private onList(data: Buffer): NegotiationStep {
    if (data.length !== 0) {
      return this.reply(encodeOptionError(Option.LIST, Reply.ERR_INVALID, 'LIST takes no data'));
    }
    const replies = this.catalog
      .list()
      .map((entry) => encodeOptionReply(Option.LIST, Reply.SERVER, encodeServerEntry(entry.name, entry.description)));
    replies.push(encodeOptionReply(Option.LIST, Reply.ACK));
    return { kind: 'continue', replies };
  }

  private onInfoOrGo(option: number, data: Buffer): NegotiationStep {
    const reader = new OptionReader(data);
    const nameBytes = reader.u32();
    if (reader.valid && nameBytes > this.limits.nameBytesMax) {
      return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'export name too long'));
    }
    const name = reader.string(nameBytes);
    const requestCount = reader.u16();
    const requests: number[] = [];
    for (let index = 0; index < requestCount && reader.valid; index += 1) requests.push(reader.u16());
    if (!reader.valid || !reader.atEnd) {
      return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'malformed INFO/GO request'));
    }
    const found = this.catalog.lookup(name);
    if (found.kind === 'unknown') {
      return this.reply(encodeOptionError(option, Reply.ERR_UNKNOWN, `no export named "${name}"`));
    }
    if (found.kind === 'refused') {
      return this.reply(encodeOptionError(option, Reply.ERR_POLICY, found.message));
    }
    const info = found.export;
    const params = this.params(info, name);
    const replies = [encodeOptionReply(option, Reply.INFO, encodeInfoExport(info.sizeBytes, params.transmissionFlags))];
    if (requests.includes(Info.NAME)) {
      replies.push(encodeOptionReply(option, Reply.INFO, encodeInfoString(Info.NAME, info.name)));
    }
    if (requests.includes(Info.DESCRIPTION) && info.description !== '') {
      replies.push(encodeOptionReply(option, Reply.INFO, encodeInfoString(Info.DESCRIPTION, info.description)));
    }
    // Block sizes are always sent: they are what this server enforces.
    const { blockSizeMinBytes, blockSizePreferredBytes, payloadBytesMax } = this.limits;
    replies.push(
      encodeOptionReply(option, Reply.INFO, encodeInfoBlockSize(blockSizeMinBytes, blockSizePreferredBytes, payloadBytesMax)),
    );
    replies.push(encodeOptionReply(option, Reply.ACK));
    if (option === Option.INFO) return { kind: 'continue', replies };
    return { kind: 'transmission', replies, params };
  }

  private params(info: ExportInfo, requestedName: string = info.name): TransmissionParams {
    // Contexts selected for another export do not carry over (the spec ties them to it).
    const allocationSelected =
      this.structuredReplies && this.metaExportName !== null && this.metaExportName === requestedName;
    return {
      export: info,
      structuredReplies: this.structuredReplies,
      allocationContextId: allocationSelected ? ALLOCATION_CONTEXT_ID : null,
      transmissionFlags: transmissionFlagsFor(info, this.structuredReplies),
    };
  }

  private onMetaContext(option: number, data: Buffer): NegotiationStep {
    const isSet = option === Option.SET_META_CONTEXT;
    if (isSet && !this.structuredReplies) {
      return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first'));
    }
    const reader = new OptionReader(data);
    const nameBytes = reader.u32();
    if (reader.valid && nameBytes > this.limits.nameBytesMax) {
      return this.reply(encodeOptionError(option, Reply.ERR_TOO_BIG, 'export name too long'));
    }
    const exportName = reader.string(nameBytes);
    const queryCount = reader.u32();
    if (reader.valid && queryCount > this.limits.metaQueriesMax) {
      return this.reply(encodeOptionError(option, Reply.ERR_TOO_BIG, `more than ${this.limits.metaQueriesMax} queries`));
    }
    const queries: string[] = [];
    for (let index = 0; index < queryCount && reader.valid; index += 1) {
      const queryBytes = reader.u32();
      if (reader.valid && queryBytes > this.limits.nameBytesMax) {
        return this.reply(encodeOptionError(option, Reply.ERR_TOO_BIG, 'meta context query too long'));
      }
      queries.push(reader.string(queryBytes));
    }
    if (!reader.valid || !reader.atEnd) {
      return this.reply(encodeOptionError(option, Reply.ERR_INVALID, 'malformed meta context request'));
    }
    const found = this.catalog.lookup(exportName);
    if (found.kind === 'unknown') {
      return this.reply(encodeOptionError(option, Reply.ERR_UNKNOWN, `no export named "${exportName}"`));
    }
    if (found.kind === 'refused') {
      return this.reply(encodeOptionError(option, Reply.ERR_POLICY, found.message));
    }
    // LIST: no query, or the bare namespace "base:", means every context we have.
    const matches = isSet
      ? queries.includes(BASE_ALLOCATION)
      : queryCount === 0 || queries.includes(BASE_ALLOCATION) || queries.includes('base:');
    if (isSet) this.metaExportName = matches ? exportName : null;
    const replies: Buffer[] = [];
    if (matches) {
      // LIST answers with id 0: ids from LIST carry no meaning (the spec allows any).
      const id = isSet ? ALLOCATION_CONTEXT_ID : 0;
      replies.push(encodeOptionReply(option, Reply.META_CONTEXT, encodeMetaContext(id, BASE_ALLOCATION)));
    }
    replies.push(encodeOptionReply(option, Reply.ACK));
    return { kind: 'continue', replies };
  }
}
