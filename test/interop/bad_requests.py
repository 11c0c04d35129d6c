#!/usr/bin/python3
"""Bad NBD requests sent through libnbd with its client-side checks turned off.

Usage: /usr/bin/python3 bad_requests.py DATA_URI READ_ONLY_URI

Mirrors libnbd's errors-server-* tests and what nbdkit answers (docs/nbd.md):
every request the server must refuse is sent, the
exact errno is checked, and after each one the same connection must still read the
right bytes. Requests that must succeed are checked too, with their data read back.

The volumes must hold known patterns when the script starts (the caller writes them
into the images before the server starts):
  data volume:      byte at offset i is i % 251
  read-only volume: byte at offset i is (i % 241) ^ 0x5a
The script keeps a model of the data volume, checks the whole volume against it at the
end, then writes the starting pattern back and checks again, so the caller can compare
the image file byte for byte afterwards.

Prints one "ok <check>" line per check passed; on the first failed check it prints
"FAIL <check>: <why>" to stderr and exits 1.
"""

import errno
import sys

import nbd

KiB = 1024
MiB = 1024 * KiB
# What the server advertises as its maximum payload (NBD_INFO_BLOCK_SIZE).
PAYLOAD_MAX = 32 * MiB
# Command flags as sent on the wire; 0x40 is not defined by the protocol.
FLAG_UNKNOWN = 0x40


def pattern(offset, length, modulus, xor):
    """Bytes [offset, offset+length) of the repeating pattern ((i % modulus) ^ xor)."""
    period = bytes((i ^ xor) for i in range(modulus))
    start = offset % modulus
    repeats = (start + length) // modulus + 1
    return (period * repeats)[start:start + length]


def data_pattern(offset, length):
    return pattern(offset, length, 251, 0)


def ro_pattern(offset, length):
    return pattern(offset, length, 241, 0x5A)


class CheckFailed(Exception):
    pass


current_check = "setup"


def ok(name):
    print(f"ok {name}", flush=True)


def require(condition, why):
    if not condition:
        raise CheckFailed(why)


def describe_difference(actual, expected, base_offset):
    if len(actual) != len(expected):
        return f"got {len(actual)} bytes, expected {len(expected)}"
    for index in range(len(expected)):
        if actual[index] != expected[index]:
            return (f"first difference at volume offset {base_offset + index}: "
                    f"got 0x{actual[index]:02x}, expected 0x{expected[index]:02x}")
    return "equal"


def connect(uri, meta_context=False):
    handle = nbd.NBD()
    # Turn off every client-side check (bounds, flags, zero size, commands the server
    # did not advertise, alignment) so each bad request reaches the server.
    handle.set_strict_mode(0)
    if meta_context:
        handle.add_meta_context("base:allocation")
    handle.connect_uri(uri)
    require(handle.get_strict_mode() == 0, "strict mode could not be turned off")
    return handle


class Volume:
    """A connection plus the model of what the volume should hold."""

    def __init__(self, handle, model, name):
        self.handle = handle
        self.model = model
        self.name = name

    def check_bytes(self, offset, length, what):
        actual = self.handle.pread(length, offset)
        expected = bytes(self.model[offset:offset + length])
        if actual != expected:
            raise CheckFailed(f"{what} on {self.name}: "
                              + describe_difference(actual, expected, offset))

    def check_alive(self):
        """A good read on the same connection returns the right bytes."""
        try:
            self.check_bytes(4 * KiB + 3, 8 * KiB, "read after the refused request")
        except nbd.Error as error:
            raise CheckFailed(f"connection to {self.name} no longer works: {error.string}")


def expect_errno(name, volume, expected_errno, request, unchanged=None):
    """Runs request(), which must fail with expected_errno sent by the server."""
    global current_check
    current_check = name
    try:
        request()
    except nbd.Error as error:
        if error.errnum != expected_errno:
            raise CheckFailed(
                f"expected {errno.errorcode[expected_errno]}, got errno {error.errnum} "
                f"({errno.errorcode.get(error.errnum, '?')}): {error.string}")
        # "command failed" is libnbd's wording for an error the server replied with;
        # anything else means libnbd refused the request itself and nothing was tested.
        if "command failed" not in (error.string or ""):
            raise CheckFailed(f"the error did not come from the server: {error.string}")
    else:
        raise CheckFailed(f"request succeeded, expected {errno.errorcode[expected_errno]}")
    volume.check_alive()
    if unchanged is not None:
        offset, length = unchanged
        volume.check_bytes(offset, length, "bytes at the refused range")
    ok(name)


def expect_success(name, action):
    global current_check
    current_check = name
    try:
        action()
    except nbd.Error as error:
        raise CheckFailed(f"request failed with errno {error.errnum}: {error.string}")
    ok(name)


def run(data_uri, ro_uri):
    global current_check
    plain = connect(data_uri)
    size = plain.get_size()
    require(size >= 64 * MiB, f"data volume is {size} bytes, needs at least 64 MiB")
    require(plain.get_block_size(nbd.SIZE_MAXIMUM) == PAYLOAD_MAX,
            f"server advertises maximum payload {plain.get_block_size(nbd.SIZE_MAXIMUM)}")
    model = bytearray(data_pattern(0, size))
    data = Volume(plain, model, "data")

    ro_handle = connect(ro_uri)
    ro_size = ro_handle.get_size()
    ro = Volume(ro_handle, bytearray(ro_pattern(0, ro_size)), "read-only")

    meta_handle = connect(data_uri, meta_context=True)
    require(meta_handle.can_meta_context("base:allocation"),
            "server did not agree to base:allocation")
    meta = Volume(meta_handle, model, "data (base:allocation)")

    current_check = "initial-contents"
    data.check_bytes(0, 64 * KiB, "start of the volume")
    data.check_bytes(size - 64 * KiB, 64 * KiB, "end of the volume")
    ro.check_bytes(0, ro_size, "whole read-only volume")
    require(ro_handle.is_read_only(), "read-only export is not flagged read-only")
    ok("initial-contents")

    # A distinct pattern over the last MiB and the first 4 KiB of the volume, so a
    # refused request that wrongly wrote anything (data or zeroes) shows.
    current_check = "write-known-pattern"
    tail = bytes([0xC3]) * MiB
    plain.pwrite(tail, size - MiB)
    model[size - MiB:size] = tail
    head = bytes([0x3C]) * (4 * KiB)
    plain.pwrite(head, 0)
    model[0:4 * KiB] = head
    data.check_bytes(size - MiB, MiB, "pattern just written")
    ok("write-known-pattern")

    end_range = (size - MiB, MiB)
    noop_extent = lambda *args: 0

    # Reads.
    expect_errno("read-past-end", data, errno.EINVAL, lambda: plain.pread(512, size))
    expect_errno("read-straddling-end", data, errno.EINVAL, lambda: plain.pread(1024, size - 512))
    expect_errno("read-far-past-end", data, errno.EINVAL, lambda: plain.pread(512, 1 << 62))
    expect_errno("read-zero-length", data, errno.EINVAL, lambda: plain.pread(0, 0))
    expect_errno("read-unknown-flag-0x40", data, errno.EINVAL,
                 lambda: plain.pread(512, 0, FLAG_UNKNOWN))
    expect_errno("read-no-hole-flag", data, errno.EINVAL,
                 lambda: plain.pread(512, 0, nbd.CMD_FLAG_NO_HOLE))

    # Writes: refused ones must not change a byte.
    expect_errno("write-req-one-flag", data, errno.EINVAL,
                 lambda: plain.pwrite(bytes([0x11]) * 4096, 0, nbd.CMD_FLAG_REQ_ONE),
                 unchanged=(0, 4 * KiB))
    expect_errno("write-unknown-flag-0x40", data, errno.EINVAL,
                 lambda: plain.pwrite(bytes([0x12]) * 4096, 0, FLAG_UNKNOWN),
                 unchanged=(0, 4 * KiB))
    expect_errno("write-zero-length", data, errno.EINVAL, lambda: plain.pwrite(b"", 0))
    expect_errno("write-past-end", data, errno.ENOSPC,
                 lambda: plain.pwrite(bytes([0x13]) * 4096, size), unchanged=end_range)
    expect_errno("write-straddling-end", data, errno.ENOSPC,
                 lambda: plain.pwrite(bytes([0x14]) * 8192, size - 4096), unchanged=end_range)
    expect_errno("zero-past-end", data, errno.ENOSPC,
                 lambda: plain.zero(4096, size), unchanged=end_range)
    expect_errno("zero-straddling-end", data, errno.ENOSPC,
                 lambda: plain.zero(8192, size - 4096), unchanged=end_range)
    expect_errno("zero-straddling-end-no-hole", data, errno.ENOSPC,
                 lambda: plain.zero(8192, size - 4096, nbd.CMD_FLAG_NO_HOLE), unchanged=end_range)
    expect_errno("trim-past-end", data, errno.EINVAL,
                 lambda: plain.trim(4096, size), unchanged=end_range)
    expect_errno("trim-straddling-end", data, errno.EINVAL,
                 lambda: plain.trim(8192, size - 4096), unchanged=end_range)

    # Block status.
    expect_errno("block-status-past-end", meta, errno.EINVAL,
                 lambda: meta_handle.block_status(4096, size, noop_extent))
    expect_errno("block-status-straddling-end", meta, errno.EINVAL,
                 lambda: meta_handle.block_status(8192, size - 4096, noop_extent))
    expect_errno("block-status-without-context", data, errno.EINVAL,
                 lambda: plain.block_status(4096, 0, noop_extent))

    extents_seen = []

    def collect_extents(metacontext, offset, entries, error):
        extents_seen.append((metacontext, offset, list(entries)))
        return 0

    def block_status_in_range():
        meta_handle.block_status(64 * KiB, 0, collect_extents)
        require(len(extents_seen) == 1, f"expected one extent callback, got {len(extents_seen)}")
        context, offset, entries = extents_seen[0]
        require(context == "base:allocation", f"callback for context {context!r}")
        require(offset == 0, f"extents start at {offset}")
        require(len(entries) >= 2 and all(length > 0 for length in entries[0::2]),
                f"bad extent list {entries[:8]}")

    expect_success("block-status-in-range", block_status_in_range)
    meta.check_alive()

    # The read-only export refuses every change and keeps serving reads.
    ro_range = (0, ro_size)
    expect_errno("read-only-write", ro, errno.EPERM,
                 lambda: ro_handle.pwrite(bytes([0x21]) * 4096, 0), unchanged=ro_range)
    expect_errno("read-only-write-past-end", ro, errno.EPERM,
                 lambda: ro_handle.pwrite(bytes([0x22]) * 4096, ro_size), unchanged=ro_range)
    expect_errno("read-only-trim", ro, errno.EPERM,
                 lambda: ro_handle.trim(4096, 0), unchanged=ro_range)
    expect_errno("read-only-zero", ro, errno.EPERM,
                 lambda: ro_handle.zero(4096, 0), unchanged=ro_range)
    expect_errno("read-only-zero-no-hole", ro, errno.EPERM,
                 lambda: ro_handle.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE), unchanged=ro_range)
    expect_success("read-only-reads", lambda: ro.check_bytes(0, ro_size, "read-only volume"))

    # Requests that look unusual but are valid.
    def fast_zero():
        plain.zero(64 * KiB, 2 * MiB, nbd.CMD_FLAG_FAST_ZERO)
        model[2 * MiB:2 * MiB + 64 * KiB] = bytes(64 * KiB)
        data.check_bytes(2 * MiB - 4 * KiB, 72 * KiB, "fast-zeroed range")

    expect_success("fast-zero", fast_zero)

    def zero_over_payload_max():
        # Zero requests carry no payload, so the payload limit does not apply to them
        # (nbdcopy sends 96 MiB and more).
        plain.zero(40 * MiB, 8 * MiB)
        model[8 * MiB:48 * MiB] = bytes(40 * MiB)
        data.check_bytes(8 * MiB - 4 * KiB, 20 * MiB, "first half of the zeroed range")
        data.check_bytes(28 * MiB - 4 * KiB, 20 * MiB + 8 * KiB, "second half of the zeroed range")

    expect_success("zero-over-payload-max", zero_over_payload_max)
    expect_errno("cache-past-end", data, errno.EINVAL, lambda: plain.cache(4096, size))
    expect_success("cache-in-range", lambda: plain.cache(MiB, 0))
    expect_success("read-fua-flag", lambda: require(
        plain.pread(4096, 8192, nbd.CMD_FLAG_FUA) == bytes(model[8192:8192 + 4096]),
        "FUA read returned the wrong bytes"))
    expect_success("read-one-byte-at-offset-1", lambda: require(
        plain.pread(1, 1) == bytes(model[1:2]), "1-byte read returned the wrong byte"))
    expect_success("read-last-byte", lambda: require(
        plain.pread(1, size - 1) == bytes(model[size - 1:size]), "last byte is wrong"))

    # Payload limits: one byte over the advertised maximum is refused with the payload
    # consumed, the maximum itself works.
    over = bytes([0xEE]) * (PAYLOAD_MAX + MiB)
    expect_errno("write-33MiB-refused", data, errno.EINVAL,
                 lambda: plain.pwrite(over, 0), unchanged=(0, 64 * KiB))
    data.check_bytes(PAYLOAD_MAX - 64 * KiB, 128 * KiB, "bytes around 32 MiB after the refused write")
    del over

    def write_32_mib():
        block = bytes(range(256)) * (PAYLOAD_MAX // 256)
        block = bytes([0xA5]) * 7 + block[7:]
        plain.pwrite(block, 4096)
        model[4096:4096 + PAYLOAD_MAX] = block
        back = plain.pread(PAYLOAD_MAX, 4096)
        if back != block:
            raise CheckFailed("32 MiB read back differs: " + describe_difference(back, block, 4096))

    expect_success("write-32MiB", write_32_mib)
    data.check_alive()

    # The whole volume, as each connection sees it.
    def whole_volume_matches():
        for handle in (plain, meta_handle):
            for offset in range(0, size, PAYLOAD_MAX):
                length = min(PAYLOAD_MAX, size - offset)
                back = handle.pread(length, offset)
                expected = bytes(model[offset:offset + length])
                if back != expected:
                    raise CheckFailed(describe_difference(back, expected, offset))

    expect_success("volume-matches-model", whole_volume_matches)

    def restore_pattern():
        for offset in range(0, size, PAYLOAD_MAX):
            length = min(PAYLOAD_MAX, size - offset)
            block = data_pattern(offset, length)
            plain.pwrite(block, offset)
            model[offset:offset + length] = block
        plain.flush()
        whole_volume_matches()

    expect_success("restore-pattern", restore_pattern)

    for handle in (plain, meta_handle, ro_handle):
        handle.shutdown()
    ok("done")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        run(sys.argv[1], sys.argv[2])
    except CheckFailed as failure:
        print(f"FAIL {current_check}: {failure}", file=sys.stderr)
        sys.exit(1)
    except nbd.Error as error:
        print(f"FAIL {current_check}: unexpected libnbd error {error.errnum}: {error.string}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
