// Scenario tests of NBD option haggling: the option sequences qemu, nbdinfo and
// nbd-client send (docs/nbd.md) against a fake catalog of three exports
// (read-write, read-only, refused), checking the replies byte for byte where a client
// would notice; and checkRequest's table of request → errno.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { constants } from '../../src/constants.js';
import {
  Command,
  CommandFlag,
  Errno,
  Info,
  Option,
  Reply,
  TxFlag,
} from '../../src/protocol/nbd/constants.js';
import {
  ALLOCATION_CONTEXT_ID,
  Negotiation,
  type ExportCatalog,
  type ExportInfo,
  type ExportLookup,
  type NegotiationLimits,
  type NegotiationStep,
} from '../../src/protocol/nbd/negotiation.js';
import type { NbdRequest } from '../../src/protocol/nbd/request-decoder.js';
import { checkRequest, type RequestContext } from '../../src/protocol/nbd/validate.js';

// ---------------------------------------------------------------------------------------
// The fake catalog and a client that speaks options.

const MiB = 1024 * 1024;
const disk: ExportInfo = { name: 'disk', description: 'main disk', sizeBytes: 64 * MiB, readOnly: false };
const readOnlyDisk: ExportInfo = { name: 'ro', description: '', sizeBytes: 1 * MiB, readOnly: true };
const refusalMessage = 'volume secret is served by node b, not by this node';

const catalog: ExportCatalog = {
  lookup(name: string): ExportLookup {
    if (name === 'disk' || name === '') return { kind: 'ok', export: disk };
    if (name === 'ro') return { kind: 'ok', export: readOnlyDisk };
    if (name === 'secret') return { kind: 'refused', message: refusalMessage };
    return { kind: 'unknown' };
  },
  list: () => [
    { name: 'disk', description: 'main disk' },
    { name: 'ro', description: '' },
  ],
};

const limits: NegotiationLimits = {
  optionCountMax: constants.nbdOptionCountMax,
  nameBytesMax: constants.nbdNameBytesMax,
  metaQueriesMax: constants.nbdMetaQueriesMax,
  blockSizeMinBytes: constants.nbdBlockSizeMinBytes,
  blockSizePreferredBytes: constants.nbdBlockSizePreferredBytes,
  payloadBytesMax: constants.nbdPayloadBytesMax,
};

/** Flags of a writable export: flush, FUA, trim, zeroes, fast zero, multi-conn, cache. */
const RW_FLAGS_SIMPLE = 0xd6d;
const RW_FLAGS_STRUCTURED = 0xded;
/** Flags of a read-only export: read-only, flush, FUA, multi-conn, cache. */
const RO_FLAGS_SIMPLE = 0x50f;
const RO_FLAGS_STRUCTURED = 0x58f;

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value, 0);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([u32(bytes.length), bytes]);
}

function infoData(name: string, infos: number[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u16(infos.length), ...infos.map(u16)]);
}

function metaData(name: string, queries: string[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u32(queries.length), ...queries.map(lengthPrefixed)]);
}

interface ParsedReply {
  option: number;
  type: number;
  data: Buffer;
}

function parseReply(reply: Buffer): ParsedReply {
  assert.ok(reply.length >= 20);
  assert.equal(reply.readBigUInt64BE(0), 0x3e889045565a9n, 'option reply magic');
  assert.equal(reply.readUInt32BE(16), reply.length - 20, 'option reply length field');
  return { option: reply.readUInt32BE(8), type: reply.readUInt32BE(12), data: reply.subarray(20) };
}

/** Replies as [type, data hex] pairs, after checking each names `option`. */
function answer(step: NegotiationStep, option: number): [number, string][] {
  return step.replies.map((reply) => {
    const parsed = parseReply(reply);
    assert.equal(parsed.option, option, 'reply names the option it answers');
    return [parsed.type, parsed.data.toString('hex')];
  });
}

function hexOf(text: string): string {
  return Buffer.from(text, 'utf8').toString('hex');
}

function infoExportHex(sizeBytes: number, flags: number): string {
  return '0000' + sizeBytes.toString(16).padStart(16, '0') + flags.toString(16).padStart(4, '0');
}

const blockSizeHex =
  '0003' +
  constants.nbdBlockSizeMinBytes.toString(16).padStart(8, '0') +
  constants.nbdBlockSizePreferredBytes.toString(16).padStart(8, '0') +
  constants.nbdPayloadBytesMax.toString(16).padStart(8, '0');

const allocationContextHex = (id: number): string => id.toString(16).padStart(8, '0') + hexOf('base:allocation');

class Client {
  readonly negotiation = new Negotiation(catalog, limits);

  constructor(flags = 0x3) {
    const step = this.negotiation.step({ kind: 'client-flags', flags });
    assert.deepStrictEqual(step, { kind: 'continue', replies: [] });
  }

  send(option: number, data: Buffer = Buffer.alloc(0)): NegotiationStep {
    return this.negotiation.step({ kind: 'option', option, data });
  }

  structured(): void {
    const step = this.send(Option.STRUCTURED_REPLY);
    assert.equal(step.kind, 'continue');
    assert.deepStrictEqual(answer(step, Option.STRUCTURED_REPLY), [[Reply.ACK, '']]);
  }

  go(name: string, infos: number[] = []): NegotiationStep & { kind: 'transmission' } {
    const step = this.send(Option.GO, infoData(name, infos));
    assert.equal(step.kind, 'transmission', `GO ${name}: ${JSON.stringify(answer(step, Option.GO))}`);
    return step as NegotiationStep & { kind: 'transmission' };
  }
}

// ---------------------------------------------------------------------------------------

describe('Negotiation: client flags', () => {
  test('FIXED_NEWSTYLE with or without NO_ZEROES is accepted', () => {
    new Client(0x1);
    new Client(0x3);
  });

  test('unknown client flags or a client without FIXED_NEWSTYLE is closed', () => {
    for (const flags of [0x0, 0x2, 0x5, 0x80000001]) {
      const step = new Negotiation(catalog, limits).step({ kind: 'client-flags', flags });
      assert.equal(step.kind, 'close', `flags 0x${flags.toString(16)}`);
      assert.deepStrictEqual(step.replies, []);
    }
  });

  test('a bad option magic closes', () => {
    const client = new Client();
    assert.equal(client.negotiation.step({ kind: 'bad-magic' }).kind, 'close');
  });
});

describe('Negotiation: as qemu 7.2 does it', () => {
  test('STRUCTURED_REPLY, SET_META_CONTEXT base:allocation, GO with INFO_BLOCK_SIZE', () => {
    const client = new Client(0x3);
    client.structured();
    const meta = client.send(Option.SET_META_CONTEXT, metaData('disk', ['base:allocation']));
    assert.equal(meta.kind, 'continue');
    assert.deepStrictEqual(answer(meta, Option.SET_META_CONTEXT), [
      [Reply.META_CONTEXT, allocationContextHex(ALLOCATION_CONTEXT_ID)],
      [Reply.ACK, ''],
    ]);
    const go = client.go('disk', [Info.BLOCK_SIZE]);
    assert.deepStrictEqual(answer(go, Option.GO), [
      [Reply.INFO, infoExportHex(disk.sizeBytes, RW_FLAGS_STRUCTURED)],
      [Reply.INFO, blockSizeHex],
      [Reply.ACK, ''],
    ]);
    assert.deepStrictEqual(go.params, {
      export: disk,
      structuredReplies: true,
      allocationContextId: ALLOCATION_CONTEXT_ID,
      transmissionFlags: RW_FLAGS_STRUCTURED,
    });
  });

  test('the block sizes sent are ones qemu accepts', () => {
    const { nbdBlockSizeMinBytes: min, nbdBlockSizePreferredBytes: preferred, nbdPayloadBytesMax: max } = constants;
    const powerOfTwo = (value: number): boolean => value > 0 && (value & (value - 1)) === 0;
    assert.ok(powerOfTwo(min) && min <= 64 * 1024);
    assert.ok(powerOfTwo(preferred) && preferred >= Math.max(min, 512));
    assert.ok(max >= preferred);
    assert.equal(disk.sizeBytes % min, 0);
  });
});

describe('Negotiation: as nbdinfo (libnbd) does it', () => {
  test('INFO with every info type, LIST_META_CONTEXT, then GO reporting identical data', () => {
    const client = new Client(0x3);
    client.structured();
    const infos = [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE];
    const info = client.send(Option.INFO, infoData('', infos));
    assert.equal(info.kind, 'continue');
    const infoReplies = answer(info, Option.INFO);
    assert.deepStrictEqual(infoReplies, [
      [Reply.INFO, infoExportHex(disk.sizeBytes, RW_FLAGS_STRUCTURED)],
      [Reply.INFO, '0001' + hexOf('disk')],
      [Reply.INFO, '0002' + hexOf('main disk')],
      [Reply.INFO, blockSizeHex],
      [Reply.ACK, ''],
    ]);
    const list = client.send(Option.LIST_META_CONTEXT, metaData('', []));
    assert.equal(list.kind, 'continue');
    const listReplies = answer(list, Option.LIST_META_CONTEXT);
    assert.equal(listReplies.length, 2);
    assert.equal(listReplies[0]?.[0], Reply.META_CONTEXT);
    assert.equal(listReplies[0]?.[1].slice(8), hexOf('base:allocation'));
    assert.deepStrictEqual(listReplies[1], [Reply.ACK, '']);
    const go = client.go('', infos);
    assert.deepStrictEqual(answer(go, Option.GO), infoReplies, 'GO after INFO must report identical data');
    assert.equal(go.params.allocationContextId, null, 'LIST selects nothing');
  });

  test('INFO then GO report identical data for a read-only export too', () => {
    const client = new Client(0x3);
    const info = client.send(Option.INFO, infoData('ro', [Info.BLOCK_SIZE, Info.DESCRIPTION]));
    const go = client.go('ro', [Info.BLOCK_SIZE, Info.DESCRIPTION]);
    assert.deepStrictEqual(answer(go, Option.GO), answer(info, Option.INFO));
    // An empty description is not sent at all.
    assert.deepStrictEqual(answer(go, Option.GO), [
      [Reply.INFO, infoExportHex(readOnlyDisk.sizeBytes, RO_FLAGS_SIMPLE)],
      [Reply.INFO, blockSizeHex],
      [Reply.ACK, ''],
    ]);
  });

  test('unknown info requests are ignored', () => {
    const client = new Client(0x3);
    const go = client.go('disk', [0x7777, Info.EXPORT]);
    assert.deepStrictEqual(answer(go, Option.GO), [
      [Reply.INFO, infoExportHex(disk.sizeBytes, RW_FLAGS_SIMPLE)],
      [Reply.INFO, blockSizeHex],
      [Reply.ACK, ''],
    ]);
  });
});

describe('Negotiation: as nbd-client does it', () => {
  test('GO without info requests; simple replies only, so no DF', () => {
    const go = new Client(0x3).go('disk');
    assert.deepStrictEqual(answer(go, Option.GO), [
      [Reply.INFO, infoExportHex(disk.sizeBytes, RW_FLAGS_SIMPLE)],
      [Reply.INFO, blockSizeHex],
      [Reply.ACK, ''],
    ]);
    assert.deepStrictEqual(go.params, {
      export: disk,
      structuredReplies: false,
      allocationContextId: null,
      transmissionFlags: RW_FLAGS_SIMPLE,
    });
  });

  test('nbd-client -l: LIST then ABORT', () => {
    const client = new Client(0x3);
    const list = client.send(Option.LIST);
    assert.equal(list.kind, 'continue');
    assert.deepStrictEqual(answer(list, Option.LIST), [
      [Reply.SERVER, '00000004' + hexOf('disk') + hexOf('main disk')],
      [Reply.SERVER, '00000002' + hexOf('ro')],
      [Reply.ACK, ''],
    ]);
    const abort = client.send(Option.ABORT);
    assert.equal(abort.kind, 'close');
    assert.deepStrictEqual(answer(abort, Option.ABORT), [[Reply.ACK, '']]);
  });

  test('EXPORT_NAME with NO_ZEROES: 10-byte reply of size and flags', () => {
    const step = new Client(0x3).send(Option.EXPORT_NAME, Buffer.from('disk'));
    assert.equal(step.kind, 'transmission');
    assert.equal(step.replies.length, 1);
    assert.equal(step.replies[0]?.toString('hex'), '0000000004000000' + '0d6d');
  });

  test('EXPORT_NAME without NO_ZEROES: 134-byte reply padded with zeroes', () => {
    const step = new Client(0x1).send(Option.EXPORT_NAME, Buffer.from('ro'));
    assert.equal(step.kind, 'transmission');
    assert.equal(step.replies.length, 1);
    assert.equal(step.replies[0]?.length, 134);
    assert.equal(step.replies[0]?.toString('hex'), '0000000000100000' + '050f' + '00'.repeat(124));
    assert.ok(step.kind === 'transmission' && step.params.export === readOnlyDisk);
  });

  test('EXPORT_NAME cannot answer an error: unknown, refused or too long names close', () => {
    for (const name of ['nope', 'secret', 'x'.repeat(limits.nameBytesMax + 1)]) {
      const step = new Client().send(Option.EXPORT_NAME, Buffer.from(name));
      assert.equal(step.kind, 'close', name.slice(0, 10));
      assert.deepStrictEqual(step.replies, []);
    }
  });

  test('EXPORT_NAME whose data is over the option limit closes too (no option reply)', () => {
    const client = new Client();
    const step = client.negotiation.step({
      kind: 'option-too-big',
      option: Option.EXPORT_NAME,
      lengthBytes: constants.nbdOptionBytesMax + 1,
    });
    // A client that sent EXPORT_NAME reads 10 or 134 bytes of export data next; an
    // option reply (magic 0x3e889045565a9) there is garbage to it.
    assert.equal(step.kind, 'close', `got ${step.kind} with ${JSON.stringify(answer(step, Option.EXPORT_NAME))}`);
  });
});

describe('Negotiation: meta contexts', () => {
  test('LIST_META_CONTEXT with no query or "base:" lists base:allocation', () => {
    for (const queries of [[], ['base:'], ['base:allocation'], ['qemu:dirty-bitmap:a', 'base:']]) {
      const client = new Client();
      client.structured();
      const step = client.send(Option.LIST_META_CONTEXT, metaData('disk', queries));
      assert.equal(step.kind, 'continue');
      const replies = answer(step, Option.LIST_META_CONTEXT);
      assert.equal(replies.length, 2, JSON.stringify(queries));
      assert.equal(replies[0]?.[0], Reply.META_CONTEXT);
      assert.equal(replies[0]?.[1].slice(8), hexOf('base:allocation'));
      assert.deepStrictEqual(replies[1], [Reply.ACK, '']);
    }
  });

  test('LIST_META_CONTEXT for contexts we do not have answers only ACK', () => {
    const client = new Client();
    client.structured();
    const step = client.send(Option.LIST_META_CONTEXT, metaData('disk', ['qemu:dirty-bitmap:sda', 'base:nonsense']));
    assert.deepStrictEqual(answer(step, Option.LIST_META_CONTEXT), [[Reply.ACK, '']]);
  });

  test('SET_META_CONTEXT needs structured replies first', () => {
    const client = new Client();
    const step = client.send(Option.SET_META_CONTEXT, metaData('disk', ['base:allocation']));
    assert.equal(step.kind, 'continue');
    const replies = answer(step, Option.SET_META_CONTEXT);
    assert.equal(replies.length, 1);
    assert.equal(replies[0]?.[0], Reply.ERR_INVALID);
  });

  test('SET_META_CONTEXT ignores unknown contexts and a bare "base:"', () => {
    const client = new Client();
    client.structured();
    const step = client.send(
      Option.SET_META_CONTEXT,
      metaData('disk', ['qemu:dirty-bitmap:sda', 'base:allocation', 'base:nonsense', 'base:']),
    );
    assert.deepStrictEqual(answer(step, Option.SET_META_CONTEXT), [
      [Reply.META_CONTEXT, allocationContextHex(ALLOCATION_CONTEXT_ID)],
      [Reply.ACK, ''],
    ]);
    assert.equal(client.go('disk').params.allocationContextId, ALLOCATION_CONTEXT_ID);

    const onlyUnknown = new Client();
    onlyUnknown.structured();
    const ignored = onlyUnknown.send(Option.SET_META_CONTEXT, metaData('disk', ['base:', 'qemu:x']));
    assert.deepStrictEqual(answer(ignored, Option.SET_META_CONTEXT), [[Reply.ACK, '']]);
    assert.equal(onlyUnknown.go('disk').params.allocationContextId, null);
  });

  test('each SET_META_CONTEXT replaces the previous selection', () => {
    const client = new Client();
    client.structured();
    client.send(Option.SET_META_CONTEXT, metaData('disk', ['base:allocation']));
    const cleared = client.send(Option.SET_META_CONTEXT, metaData('disk', []));
    assert.deepStrictEqual(answer(cleared, Option.SET_META_CONTEXT), [[Reply.ACK, '']]);
    assert.equal(client.go('disk').params.allocationContextId, null);
  });

  test('a context selected for another export does not carry over to GO', () => {
    const client = new Client();
    client.structured();
    client.send(Option.SET_META_CONTEXT, metaData('ro', ['base:allocation']));
    const go = client.go('disk', [Info.BLOCK_SIZE]);
    assert.equal(go.params.allocationContextId, null);

    const same = new Client();
    same.structured();
    same.send(Option.SET_META_CONTEXT, metaData('ro', ['base:allocation']));
    assert.equal(same.go('ro').params.allocationContextId, ALLOCATION_CONTEXT_ID);
  });

  test('unknown and refused exports, malformed and oversized requests', () => {
    const client = new Client();
    client.structured();
    const single = (option: number, data: Buffer): number => {
      const step = client.send(option, data);
      assert.equal(step.kind, 'continue');
      const replies = answer(step, option);
      assert.equal(replies.length, 1);
      return replies[0]?.[0] ?? 0;
    };
    for (const option of [Option.SET_META_CONTEXT, Option.LIST_META_CONTEXT]) {
      assert.equal(single(option, metaData('nope', ['base:allocation'])), Reply.ERR_UNKNOWN);
      assert.equal(single(option, metaData('secret', ['base:allocation'])), Reply.ERR_POLICY);
      // A query whose length runs past the option data.
      const overrun = Buffer.concat([lengthPrefixed('disk'), u32(1), u32(100), Buffer.from('base:allocation')]);
      assert.equal(single(option, overrun), Reply.ERR_INVALID);
      assert.equal(single(option, Buffer.concat([metaData('disk', ['base:allocation']), Buffer.from([0])])), Reply.ERR_INVALID);
      assert.equal(single(option, Buffer.alloc(3)), Reply.ERR_INVALID);
      const tooMany = metaData('disk', Array.from({ length: limits.metaQueriesMax + 1 }, () => 'base:allocation'));
      assert.equal(single(option, tooMany), Reply.ERR_TOO_BIG);
    }
  });
});

describe('Negotiation: INFO and GO', () => {
  test('GO for an unknown export: ERR_UNKNOWN, and the client may try again', () => {
    const client = new Client();
    const step = client.send(Option.GO, infoData('nope', []));
    assert.equal(step.kind, 'continue');
    const replies = answer(step, Option.GO);
    assert.equal(replies.length, 1);
    assert.equal(replies[0]?.[0], Reply.ERR_UNKNOWN);
    assert.equal(client.go('disk').params.export, disk);
  });

  test('a refused export: ERR_POLICY carrying the catalog message', () => {
    for (const option of [Option.INFO, Option.GO]) {
      const step = new Client().send(option, infoData('secret', [Info.BLOCK_SIZE]));
      assert.equal(step.kind, 'continue');
      assert.deepStrictEqual(answer(step, option), [[Reply.ERR_POLICY, hexOf(refusalMessage)]]);
    }
  });

  test('malformed INFO/GO data: ERR_INVALID', () => {
    const bad = [
      Buffer.alloc(0),
      Buffer.from([0, 0, 0]),
      Buffer.concat([u32(10), Buffer.from('disk'), u16(0)]),
      Buffer.concat([infoData('disk', [Info.BLOCK_SIZE]), Buffer.from([1])]),
      Buffer.concat([lengthPrefixed('disk'), u16(2), u16(Info.BLOCK_SIZE)]),
    ];
    for (const option of [Option.INFO, Option.GO]) {
      for (const data of bad) {
        const step = new Client().send(option, data);
        assert.equal(step.kind, 'continue', data.toString('hex'));
        const replies = answer(step, option);
        assert.equal(replies.length, 1);
        assert.equal(replies[0]?.[0], Reply.ERR_INVALID, data.toString('hex'));
      }
    }
  });

  test('a name longer than the limit is refused, not looked up', () => {
    const step = new Client().send(Option.GO, infoData('x'.repeat(limits.nameBytesMax + 1), []));
    assert.equal(step.kind, 'continue');
    const replies = answer(step, Option.GO);
    assert.equal(replies.length, 1);
    assert.ok((replies[0]?.[0] ?? 0) >= 2 ** 31, 'an error reply');
  });

  test('transmission flags: DF only with structured replies, read-only exports offer no writes', () => {
    const table: [string, boolean, number][] = [
      ['disk', false, RW_FLAGS_SIMPLE],
      ['disk', true, RW_FLAGS_STRUCTURED],
      ['ro', false, RO_FLAGS_SIMPLE],
      ['ro', true, RO_FLAGS_STRUCTURED],
    ];
    for (const [name, structured, expected] of table) {
      const client = new Client();
      if (structured) client.structured();
      const flags = client.go(name).params.transmissionFlags;
      assert.equal(flags, expected, `${name} structured=${structured}: 0x${flags.toString(16)}`);
      assert.ok(flags & TxFlag.HAS_FLAGS);
      assert.ok(flags & TxFlag.CAN_MULTI_CONN);
      assert.equal((flags & TxFlag.SEND_DF) !== 0, structured);
      const readOnly = name === 'ro';
      assert.equal((flags & TxFlag.READ_ONLY) !== 0, readOnly);
      for (const write of [TxFlag.SEND_TRIM, TxFlag.SEND_WRITE_ZEROES, TxFlag.SEND_FAST_ZERO]) {
        assert.equal((flags & write) !== 0, !readOnly);
      }
    }
  });
});

describe('Negotiation: other options and limits', () => {
  test('STRUCTURED_REPLY with data or twice: ERR_INVALID', () => {
    const client = new Client();
    const withData = client.send(Option.STRUCTURED_REPLY, Buffer.from([0]));
    assert.equal(answer(withData, Option.STRUCTURED_REPLY)[0]?.[0], Reply.ERR_INVALID);
    client.structured();
    const twice = client.send(Option.STRUCTURED_REPLY);
    assert.equal(answer(twice, Option.STRUCTURED_REPLY)[0]?.[0], Reply.ERR_INVALID);
  });

  test('LIST with data: ERR_INVALID', () => {
    const step = new Client().send(Option.LIST, Buffer.from('x'));
    assert.deepStrictEqual(answer(step, Option.LIST).map(([type]) => type), [Reply.ERR_INVALID]);
  });

  test('unsupported options get ERR_UNSUP and negotiation goes on', () => {
    for (const option of [Option.STARTTLS, Option.PEEK_EXPORT, Option.EXTENDED_HEADERS, 0, 12, 0xffffffff]) {
      const client = new Client();
      const step = client.send(option, Buffer.from('junk'));
      assert.equal(step.kind, 'continue');
      const replies = answer(step, option);
      assert.equal(replies.length, 1);
      const type = replies[0]?.[0];
      if (option === Option.STARTTLS) assert.ok(type === Reply.ERR_UNSUP || type === Reply.ERR_POLICY);
      else assert.equal(type, Reply.ERR_UNSUP);
      client.go('disk');
    }
  });

  test('an option over the size limit: ERR_TOO_BIG and negotiation goes on', () => {
    const client = new Client();
    const step = client.negotiation.step({ kind: 'option-too-big', option: Option.GO, lengthBytes: 1 << 20 });
    assert.equal(step.kind, 'continue');
    assert.deepStrictEqual(answer(step, Option.GO).map(([type]) => type), [Reply.ERR_TOO_BIG]);
    client.go('disk');
  });

  test('more options than optionCountMax close the connection', () => {
    const client = new Client();
    for (let index = 0; index < limits.optionCountMax; index += 1) {
      assert.equal(client.send(Option.LIST).kind, 'continue');
    }
    const step = client.send(Option.LIST);
    assert.equal(step.kind, 'close');
    assert.deepStrictEqual(step.replies, []);
  });

  test('while shutting down: ERR_SHUTDOWN, ABORT still acknowledged, EXPORT_NAME closes', () => {
    const client = new Client();
    client.negotiation.setShuttingDown();
    for (const option of [Option.GO, Option.INFO, Option.LIST, Option.STRUCTURED_REPLY]) {
      const step = client.send(option, option === Option.GO || option === Option.INFO ? infoData('disk', []) : undefined);
      assert.equal(step.kind, 'continue');
      assert.deepStrictEqual(answer(step, option).map(([type]) => type), [Reply.ERR_SHUTDOWN]);
    }
    assert.equal(client.send(Option.EXPORT_NAME, Buffer.from('disk')).kind, 'close');
    const abortClient = new Client();
    abortClient.negotiation.setShuttingDown();
    const abort = abortClient.send(Option.ABORT);
    assert.equal(abort.kind, 'close');
    assert.deepStrictEqual(answer(abort, Option.ABORT), [[Reply.ACK, '']]);
  });
});

// ---------------------------------------------------------------------------------------
// checkRequest: one row per rule in validate.ts.

const SIZE = 128 * MiB;
const PAYLOAD_MAX = 32 * MiB;

const baseContext: RequestContext = {
  sizeBytes: SIZE,
  readOnly: false,
  structuredReplies: true,
  allocationSelected: true,
  payloadBytesMax: PAYLOAD_MAX,
};

interface Row {
  name: string;
  type: number;
  flags?: number;
  offset?: number;
  length?: number;
  payloadDiscarded?: boolean;
  context?: Partial<RequestContext>;
  expected: Errno;
}

const { READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS } = Command;
const { FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO } = CommandFlag;
const readOnly = { readOnly: true };

const rows: Row[] = [
  // Commands and flags.
  { name: 'unknown command 8 (RESIZE)', type: 8, length: 4096, expected: Errno.EINVAL },
  { name: 'unknown command 0xffff', type: 0xffff, expected: Errno.EINVAL },
  { name: 'unknown flag 0x20 on READ', type: READ, flags: 0x20, length: 512, expected: Errno.EINVAL },
  { name: 'unknown flag 0x8000 on FLUSH', type: FLUSH, flags: 0x8000, expected: Errno.EINVAL },
  { name: 'NO_HOLE on READ', type: READ, flags: NO_HOLE, length: 512, expected: Errno.EINVAL },
  { name: 'REQ_ONE on WRITE', type: WRITE, flags: REQ_ONE, length: 512, expected: Errno.EINVAL },
  { name: 'DF on WRITE', type: WRITE, flags: DF, length: 512, expected: Errno.EINVAL },
  { name: 'FAST_ZERO on TRIM', type: TRIM, flags: FAST_ZERO, length: 512, expected: Errno.EINVAL },
  { name: 'NO_HOLE on CACHE', type: CACHE, flags: NO_HOLE, length: 512, expected: Errno.EINVAL },
  { name: 'REQ_ONE on WRITE_ZEROES', type: WRITE_ZEROES, flags: REQ_ONE, length: 512, expected: Errno.EINVAL },
  { name: 'FAST_ZERO on BLOCK_STATUS', type: BLOCK_STATUS, flags: FAST_ZERO, length: 512, expected: Errno.EINVAL },
  { name: 'DF on FLUSH', type: FLUSH, flags: DF, expected: Errno.EINVAL },
  { name: 'NO_HOLE on DISC', type: DISC, flags: NO_HOLE, expected: Errno.EINVAL },
  { name: 'flag check comes before read-only', type: WRITE, flags: DF, length: 512, context: readOnly, expected: Errno.EINVAL },
  // FUA is accepted on every command.
  { name: 'FUA on READ', type: READ, flags: FUA, length: 512, expected: Errno.OK },
  { name: 'FUA on WRITE', type: WRITE, flags: FUA, length: 512, expected: Errno.OK },
  { name: 'FUA on DISC', type: DISC, flags: FUA, expected: Errno.OK },
  { name: 'FUA on FLUSH', type: FLUSH, flags: FUA, expected: Errno.OK },
  { name: 'FUA on TRIM', type: TRIM, flags: FUA, length: 512, expected: Errno.OK },
  { name: 'FUA on CACHE', type: CACHE, flags: FUA, length: 512, expected: Errno.OK },
  { name: 'FUA on WRITE_ZEROES', type: WRITE_ZEROES, flags: FUA, length: 512, expected: Errno.OK },
  { name: 'FUA on BLOCK_STATUS', type: BLOCK_STATUS, flags: FUA, length: 512, expected: Errno.OK },
  // DF needs structured replies.
  { name: 'DF on READ with structured replies', type: READ, flags: DF, length: 512, expected: Errno.OK },
  { name: 'DF on READ without structured replies', type: READ, flags: DF, length: 512, context: { structuredReplies: false }, expected: Errno.EINVAL },
  // READ.
  { name: 'READ 1 byte at offset 1', type: READ, offset: 1, length: 1, expected: Errno.OK },
  { name: 'READ up to the end', type: READ, offset: SIZE - 4096, length: 4096, expected: Errno.OK },
  { name: 'READ of zero length', type: READ, length: 0, expected: Errno.EINVAL },
  { name: 'READ of the maximum payload', type: READ, length: PAYLOAD_MAX, expected: Errno.OK },
  { name: 'READ over the maximum payload', type: READ, length: PAYLOAD_MAX + 1, expected: Errno.EINVAL },
  { name: 'READ straddling the end', type: READ, offset: SIZE - 512, length: 1024, expected: Errno.EINVAL },
  { name: 'READ past the end', type: READ, offset: SIZE, length: 1, expected: Errno.EINVAL },
  { name: 'READ at an offset beyond 2^53', type: READ, offset: Infinity, length: 1, expected: Errno.EINVAL },
  { name: 'READ on a read-only export', type: READ, length: 512, context: readOnly, expected: Errno.OK },
  // WRITE.
  { name: 'WRITE in range', type: WRITE, offset: 4096, length: 4096, expected: Errno.OK },
  { name: 'WRITE up to the end', type: WRITE, offset: SIZE - 1, length: 1, expected: Errno.OK },
  { name: 'WRITE on a read-only export', type: WRITE, length: 512, context: readOnly, expected: Errno.EPERM },
  { name: 'WRITE past the end on a read-only export', type: WRITE, offset: SIZE, length: 512, context: readOnly, expected: Errno.EPERM },
  { name: 'WRITE with a discarded payload', type: WRITE, length: PAYLOAD_MAX + 1, payloadDiscarded: true, expected: Errno.EINVAL },
  { name: 'WRITE of zero length', type: WRITE, length: 0, expected: Errno.EINVAL },
  { name: 'WRITE straddling the end', type: WRITE, offset: SIZE - 1, length: 2, expected: Errno.ENOSPC },
  { name: 'WRITE past the end', type: WRITE, offset: SIZE, length: 512, expected: Errno.ENOSPC },
  { name: 'WRITE at an offset beyond 2^53', type: WRITE, offset: Infinity, length: 512, expected: Errno.ENOSPC },
  // WRITE_ZEROES.
  { name: 'WRITE_ZEROES larger than the payload limit', type: WRITE_ZEROES, length: 96 * MiB, expected: Errno.OK },
  { name: 'WRITE_ZEROES with NO_HOLE and FAST_ZERO', type: WRITE_ZEROES, flags: NO_HOLE | FAST_ZERO | FUA, length: 512, expected: Errno.OK },
  { name: 'WRITE_ZEROES on a read-only export', type: WRITE_ZEROES, length: 512, context: readOnly, expected: Errno.EPERM },
  { name: 'WRITE_ZEROES of zero length', type: WRITE_ZEROES, length: 0, expected: Errno.EINVAL },
  { name: 'WRITE_ZEROES past the end', type: WRITE_ZEROES, offset: SIZE - 512, length: 1024, expected: Errno.ENOSPC },
  // TRIM.
  { name: 'TRIM of the whole export', type: TRIM, length: SIZE, expected: Errno.OK },
  { name: 'TRIM on a read-only export', type: TRIM, length: 512, context: readOnly, expected: Errno.EPERM },
  { name: 'TRIM of zero length', type: TRIM, length: 0, expected: Errno.EINVAL },
  { name: 'TRIM past the end', type: TRIM, offset: SIZE, length: 512, expected: Errno.EINVAL },
  // CACHE.
  { name: 'CACHE in range', type: CACHE, length: 64 * MiB, expected: Errno.OK },
  { name: 'CACHE on a read-only export', type: CACHE, length: 512, context: readOnly, expected: Errno.OK },
  { name: 'CACHE of zero length', type: CACHE, length: 0, expected: Errno.EINVAL },
  { name: 'CACHE past the end', type: CACHE, offset: SIZE - 1, length: 2, expected: Errno.EINVAL },
  // BLOCK_STATUS.
  { name: 'BLOCK_STATUS with REQ_ONE', type: BLOCK_STATUS, flags: REQ_ONE, length: 64 * MiB, expected: Errno.OK },
  { name: 'BLOCK_STATUS of the whole export', type: BLOCK_STATUS, length: SIZE, expected: Errno.OK },
  { name: 'BLOCK_STATUS on a read-only export', type: BLOCK_STATUS, length: 512, context: readOnly, expected: Errno.OK },
  { name: 'BLOCK_STATUS without a context', type: BLOCK_STATUS, length: 512, context: { allocationSelected: false }, expected: Errno.EINVAL },
  { name: 'BLOCK_STATUS of zero length', type: BLOCK_STATUS, length: 0, expected: Errno.EINVAL },
  { name: 'BLOCK_STATUS past the end', type: BLOCK_STATUS, offset: SIZE, length: 512, expected: Errno.EINVAL },
  // FLUSH and DISC.
  { name: 'FLUSH', type: FLUSH, expected: Errno.OK },
  { name: 'FLUSH on a read-only export', type: FLUSH, context: readOnly, expected: Errno.OK },
  { name: 'FLUSH with a non-zero offset', type: FLUSH, offset: 4096, expected: Errno.EINVAL },
  { name: 'FLUSH with a non-zero length', type: FLUSH, length: 4096, expected: Errno.EINVAL },
  { name: 'DISC', type: DISC, expected: Errno.OK },
];

describe('checkRequest', () => {
  for (const row of rows) {
    test(`${row.name} → ${row.expected}`, () => {
      const request: NbdRequest = {
        flags: row.flags ?? 0,
        type: row.type,
        cookie: 0x1234n,
        offset: row.offset ?? 0,
        length: row.length ?? 0,
        payload: [],
        payloadDiscarded: row.payloadDiscarded ?? false,
      };
      assert.equal(checkRequest(request, { ...baseContext, ...row.context }), row.expected);
    });
  }
});
