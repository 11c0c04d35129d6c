#!/usr/bin/python3
# Crash-test client for blockmirror (used by crash.test.ts and power-cut.test.ts).
#
#   writer.py write URI --seed S --round R --first-id N [options]
#       Writes 4 KiB blocks with unique, verifiable contents, several requests in flight,
#       a seeded mix of FUA writes and plain writes followed by FLUSH, until the server
#       goes away (it is SIGKILLed by the test) or the budget runs out. Prints one line
#       per event, flushed at once, so the test knows exactly what was acknowledged
#       even when this process is cut short:
#         BEGIN <seed> <round> <first id>
#         S <id> <block> <fua>   submitted (the write may land from here on)
#         A <id>                 the write's reply was received (success)
#         D <id>                 the write is acknowledged as durable: its FUA reply was
#                                received, or it was replied to before a FLUSH was sent
#                                and that FLUSH's reply was received
#         E <id> <message>       the write failed (indeterminate: it may have landed)
#         FS <fid> <count>       a FLUSH was sent, covering <count> replied writes
#         FD <fid>               that FLUSH's reply was received
#         FE <fid> <message>     that FLUSH failed
#         X <message>            the connection failed (expected when the server is killed)
#         R connected again      with --reconnect: after an X (a lost connection, or with
#                                --reply-timeout one that answered nothing for that long),
#                                the same URI answered again
#                                (what was in flight got an E or FE line)
#         END <submitted>        the budget ran out with every request answered
#   writer.py check --before IMG|- --after IMG --history OUT... [--acknowledged durable|replied]
#       Checks a read-back image against the histories (see check_mode) and prints JSON.
#   writer.py dump URI FILE
#       Reads the whole export into FILE (what a client reads back, not the image file).
#
# Block contents (little-endian), 4096 bytes:
#   0  8  magic "BMCRASH1"      8  4  block number     12 4  round
#   16 8  write id (unique)     24 4  seed (low 32 bits)  28 4  zero
#   32 4060  filler: SHA-256(key || i) for i = 0, 1, ..., key = SHA-256("<seed>/<id>")
#   4092 4  CRC-32 (zlib) of bytes 0..4091
# Two requests in flight never touch the same block, so writes to one block are ordered.

import argparse
import hashlib
import random
import struct
import sys
import time
import zlib

import nbd

BLOCK = 4096
MAGIC = b'BMCRASH1'


def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def block_contents(seed, round_no, write_id, block):
    header = MAGIC + struct.pack('<IIQII', block, round_no, write_id, seed & 0xFFFFFFFF, 0)
    key = hashlib.sha256(('%d/%d' % (seed, write_id)).encode()).digest()
    filler = b''.join(hashlib.sha256(key + struct.pack('<I', i)).digest() for i in range(127))
    body = header + filler[: BLOCK - 4 - len(header)]
    return body + struct.pack('<I', zlib.crc32(body) & 0xFFFFFFFF)


def write_mode(args):
    rng = random.Random('%d/%d' % (args.seed, args.round))
    h = nbd.NBD()
    h.connect_uri(args.uri)
    size = h.get_size()
    blocks = size // BLOCK
    if args.blocks > blocks:
        raise SystemExit('export has %d blocks, asked for %d' % (blocks, args.blocks))
    # A hot set spread over the volume, so blocks are overwritten many times; the rest
    # of the writes go anywhere.
    hot = rng.sample(range(args.blocks), min(args.hot, args.blocks))

    next_id = args.first_id
    next_fid = 1
    inflight = {}  # cookie -> ('w', id, block, fua, buffer) | ('f', fid, [ids])
    busy_blocks = set()
    replied_plain = []  # ids replied to, not FUA, not yet covered by a sent FLUSH
    flushes_inflight = 0
    flush_after = rng.randint(1, args.flush_every_max)
    deadline = time.monotonic() + args.seconds
    submitted = 0
    out('BEGIN %d %d %d' % (args.seed, args.round, args.first_id))

    def submit_write():
        nonlocal next_id, submitted
        for _ in range(64):
            block = rng.choice(hot) if rng.random() < args.hot_fraction else rng.randrange(args.blocks)
            if block not in busy_blocks:
                break
        else:
            return False
        write_id = next_id
        next_id += 1
        fua = rng.random() < args.fua_fraction
        buf = nbd.Buffer.from_bytearray(bytearray(block_contents(args.seed, args.round, write_id, block)))
        out('S %d %d %d' % (write_id, block, 1 if fua else 0))
        cookie = h.aio_pwrite(buf, block * BLOCK, flags=nbd.CMD_FLAG_FUA if fua else 0)
        inflight[cookie] = ('w', write_id, block, fua, buf)
        busy_blocks.add(block)
        submitted += 1
        return True

    def submit_flush():
        nonlocal next_fid, flushes_inflight
        covered = list(replied_plain)
        replied_plain.clear()
        fid = next_fid
        next_fid += 1
        out('FS %d %d' % (fid, len(covered)))
        cookie = h.aio_flush()
        inflight[cookie] = ('f', fid, covered)
        flushes_inflight += 1

    def harvest():
        nonlocal flushes_inflight, flush_after
        # In cookie (submission) order; a write replied to is only counted as covered by
        # a FLUSH sent after this harvest, which is conservative.
        for cookie in sorted(inflight):
            error = None
            try:
                if not h.aio_command_completed(cookie):
                    continue
            except nbd.Error as e:
                error = str(e).replace('\n', ' ')
            entry = inflight.pop(cookie)
            if entry[0] == 'w':
                _, write_id, block, fua, _buf = entry
                busy_blocks.discard(block)
                if error is not None:
                    out('E %d %s' % (write_id, error))
                else:
                    out('A %d' % write_id)
                    if fua:
                        out('D %d' % write_id)
                    else:
                        replied_plain.append(write_id)
            else:
                _, fid, covered = entry
                flushes_inflight -= 1
                if error is not None:
                    out('FE %d %s' % (fid, error))
                else:
                    for write_id in covered:
                        out('D %d' % write_id)
                    out('FD %d' % fid)

    def reconnect(error):
        # The server went away: what was in flight is indeterminate, and the same URI is
        # tried again (a floating address moves to the new primary) until --reconnect runs out.
        nonlocal h, flushes_inflight
        out('X %s' % str(error).replace('\n', ' '))
        for entry in inflight.values():
            if entry[0] == 'w':
                out('E %d connection lost' % entry[1])
            else:
                out('FE %d connection lost' % entry[1])
        inflight.clear()
        busy_blocks.clear()
        replied_plain.clear()
        flushes_inflight = 0
        give_up = time.monotonic() + args.reconnect
        while True:
            try:
                h.close()
            except Exception:
                pass
            h = nbd.NBD()
            try:
                h.connect_uri(args.uri)
                out('R connected again')
                return
            except nbd.Error as e:
                if time.monotonic() >= give_up:
                    raise e
                time.sleep(0.1)

    class Silent(Exception):
        pass

    def run_writes():
        nonlocal flush_after
        answered_at = time.monotonic()
        while True:
            out_of_budget = time.monotonic() >= deadline or submitted >= args.max_writes
            if not out_of_budget:
                while len(inflight) - flushes_inflight < args.depth:
                    if not submit_write():
                        break
                if len(replied_plain) >= flush_after and flushes_inflight < 2:
                    submit_flush()
                    flush_after = rng.randint(1, args.flush_every_max)
            elif replied_plain and flushes_inflight == 0:
                submit_flush()
            if not inflight:
                break
            before = len(inflight)
            h.poll(1000)
            harvest()
            if len(inflight) < before or not inflight:
                answered_at = time.monotonic()
            elif args.reply_timeout > 0 and time.monotonic() - answered_at > args.reply_timeout:
                # A server cut off sends nothing, and the kernel keeps the connection: only a
                # reply that does not come tells.
                raise Silent('no reply within %g s' % args.reply_timeout)
        out('END %d' % submitted)
        h.shutdown()

    while True:
        try:
            run_writes()
            return
        except (nbd.Error, Silent) as e:
            if args.reconnect <= 0 or time.monotonic() >= deadline:
                # The server went away: everything still in flight is indeterminate.
                out('X %s' % str(e).replace('\n', ' '))
                sys.exit(3)
            try:
                reconnect(e)
            except nbd.Error as gone:
                out('X %s' % str(gone).replace('\n', ' '))
                sys.exit(3)


def dump_mode(args):
    h = nbd.NBD()
    h.connect_uri(args.uri)
    size = h.get_size()
    chunk = 4 * 1024 * 1024
    with open(args.file, 'wb') as f:
        for offset in range(0, size, chunk):
            f.write(h.pread(min(chunk, size - offset), offset))
    h.shutdown()
    out('DUMPED %d' % size)


def describe(data, seed):
    """What a block holds, in words, for failure messages."""
    if data == bytes(BLOCK):
        return 'zeroes'
    if data[:8] != MAGIC:
        return 'unknown data (no magic; first bytes %s)' % data[:16].hex()
    block, round_no, write_id, block_seed, _ = struct.unpack_from('<IIQII', data, 8)
    crc_ok = zlib.crc32(data[:-4]) & 0xFFFFFFFF == struct.unpack_from('<I', data, BLOCK - 4)[0]
    exact = data == block_contents(seed, round_no, write_id, block) if block_seed == seed & 0xFFFFFFFF else False
    return 'write %d (block %d, round %d, crc %s, contents %s)' % (
        write_id, block, round_no, 'ok' if crc_ok else 'BAD', 'exact' if exact else 'NOT as written')


def read_history(files):
    """Parses writer outputs: per block, its writes in submission order."""
    seed = None
    per_block = {}
    info = {}  # id -> dict(block, round, fua, replied, durable)
    counts = dict(submitted=0, replied=0, durable=0, failed=0, flushes=0, disconnects=0)
    for name in files:
        round_no = None
        with open(name) as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                kind = parts[0]
                if kind == 'BEGIN':
                    seed, round_no = int(parts[1]), int(parts[2])
                elif kind == 'S':
                    write_id, block, fua = int(parts[1]), int(parts[2]), parts[3] == '1'
                    if round_no is None or write_id in info:
                        raise SystemExit('%s: bad history line %r' % (name, line))
                    info[write_id] = dict(block=block, round=round_no, fua=fua, replied=False, durable=False)
                    per_block.setdefault(block, []).append(write_id)
                    counts['submitted'] += 1
                elif kind == 'A':
                    info[int(parts[1])]['replied'] = True
                    counts['replied'] += 1
                elif kind == 'D':
                    entry = info[int(parts[1])]
                    if not entry['replied']:
                        raise SystemExit('%s: durable before replied: %r' % (name, line))
                    entry['durable'] = True
                    counts['durable'] += 1
                elif kind == 'E':
                    counts['failed'] += 1
                elif kind == 'FD':
                    counts['flushes'] += 1
                elif kind == 'X':
                    counts['disconnects'] += 1
    return seed, per_block, info, counts


def check_mode(args):
    """
    Compares the volume read back after a crash (AFTER) with the one read back before the
    writes of the histories (BEFORE, or zeroes). For every block:
      - not written: it must hold exactly what it held before;
      - written, some write acknowledged as durable (with --acknowledged replied: replied
        to): it must hold exactly the last such write or a write submitted after it (those
        were in flight or not yet flushed);
      - written, none durable: what it held before, or exactly one of the writes.
    Prints one JSON object: counts, and the first failures in words.
    """
    import json
    seed, per_block, info, counts = read_history(args.history)
    if seed is None:
        seed = args.seed
    failures = []
    failure_count = 0
    held = dict(unchanged=0, last_durable=0, newer_than_durable=0, before=0, undurable_write=0)
    size = None
    with open(args.after, 'rb') as after_file:
        after_all = after_file.read()
    size = len(after_all)
    if args.before == '-':
        before_all = bytes(size)
    else:
        with open(args.before, 'rb') as before_file:
            before_all = before_file.read()
    if len(before_all) != size:
        raise SystemExit('before is %d bytes, after is %d' % (len(before_all), size))

    def fail(text):
        nonlocal failure_count
        failure_count += 1
        if len(failures) < args.max_failures:
            failures.append(text)

    for block in range(size // BLOCK):
        after = after_all[block * BLOCK:(block + 1) * BLOCK]
        before = before_all[block * BLOCK:(block + 1) * BLOCK]
        writes = per_block.get(block)
        if not writes:
            if after != before:
                fail('block %d was not written, yet changed: before %s, after %s' % (
                    block, describe(before, seed), describe(after, seed)))
            else:
                held['unchanged'] += 1
            continue
        # A write must be there (or a later one) once acknowledged as durable; with
        # --acknowledged replied (the server's process was killed, the machine kept its
        # page cache), once it was replied to at all.
        kept = 'replied' if args.acknowledged == 'replied' else 'durable'
        durable_at = max((i for i, w in enumerate(writes) if info[w][kept]), default=None)
        candidates = writes if durable_at is None else writes[durable_at:]
        matched = None
        if after[:8] == MAGIC:
            write_id = struct.unpack_from('<Q', after, 16)[0]
            if write_id in candidates:
                entry = info[write_id]
                if after == block_contents(seed, entry['round'], write_id, block):
                    matched = write_id
        if matched is not None:
            if durable_at is None:
                held['undurable_write'] += 1
            elif matched == writes[durable_at]:
                held['last_durable'] += 1
            else:
                held['newer_than_durable'] += 1
            continue
        if durable_at is None and after == before:
            held['before'] += 1
            continue
        history = ' '.join('%d%s%s' % (w, 'F' if info[w]['fua'] else '',
                                      '!' if info[w]['durable'] else ('+' if info[w]['replied'] else '?'))
                           for w in writes[-8:])
        if durable_at is None:
            fail('block %d holds %s; allowed: before (%s) or one of its writes [%s]' % (
                block, describe(after, seed), describe(before, seed), history))
        else:
            fail('LOST DURABLE WRITE: block %d holds %s; last write acknowledged as durable: %d; '
                 'allowed it or a later write; writes (last 8; F=FUA, !=durable, +=replied, ?=no reply): [%s]' % (
                     block, describe(after, seed), writes[durable_at], history))
    durable_blocks = sum(1 for ws in per_block.values() if any(info[w]['durable'] for w in ws))
    print(json.dumps(dict(seed=seed, blocks=size // BLOCK, written_blocks=len(per_block),
                          durable_blocks=durable_blocks, counts=counts, held=held,
                          failure_count=failure_count, failures=failures)))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest='mode', required=True)
    w = sub.add_parser('write')
    w.add_argument('uri')
    w.add_argument('--seed', type=int, required=True)
    w.add_argument('--round', type=int, required=True)
    w.add_argument('--first-id', type=int, required=True)
    w.add_argument('--blocks', type=int, default=16384)
    w.add_argument('--hot', type=int, default=256)
    w.add_argument('--hot-fraction', type=float, default=0.7)
    w.add_argument('--depth', type=int, default=16)
    w.add_argument('--fua-fraction', type=float, default=0.3)
    w.add_argument('--flush-every-max', type=int, default=24)
    w.add_argument('--seconds', type=float, default=30)
    w.add_argument('--max-writes', type=int, default=10**9)
    w.add_argument('--reconnect', type=float, default=0, help='on a lost connection, connect again for up to this many seconds')
    w.add_argument('--reply-timeout', type=float, default=0, help='a connection with requests in flight and no reply for this many seconds is lost')
    d = sub.add_parser('dump')
    d.add_argument('uri')
    d.add_argument('file')
    c = sub.add_parser('check')
    c.add_argument('--before', required=True, help="image read back before these writes, or '-' for zeroes")
    c.add_argument('--after', required=True, help='image read back after the crash')
    c.add_argument('--history', action='append', default=[], help='writer output (repeatable; none: nothing was written)')
    c.add_argument('--seed', type=int, default=0, help='only used when no history has a BEGIN line')
    c.add_argument('--max-failures', type=int, default=20)
    c.add_argument('--acknowledged', choices=['durable', 'replied'], default='durable',
                   help='which writes must survive: those acknowledged as durable (a power cut), or every one replied to (a killed process)')
    args = parser.parse_args()
    if args.mode == 'write':
        write_mode(args)
    elif args.mode == 'dump':
        dump_mode(args)
    else:
        check_mode(args)


if __name__ == '__main__':
    main()
