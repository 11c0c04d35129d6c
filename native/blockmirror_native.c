/*
 * The few file-system calls that Node's fs module does not expose and that a block
 * server needs: lseek with SEEK_DATA/SEEK_HOLE (to report holes truthfully) and
 * fallocate (to punch holes for TRIM and to zero ranges without writing zeroes).
 *
 * seek() is synchronous: it only reads extent metadata and returns at once.
 * preadNowait() is synchronous too, but never blocks: with RWF_NOWAIT the kernel answers
 * EAGAIN instead of waiting for the disk.
 * fallocate() runs on the libuv thread pool, since punching or zeroing a large range
 * may take milliseconds, and reports through a Node-style callback(err); so does
 * writePieces(), a large write split where the page cache should split it.
 * crc32c() checksums log entries and peer frames (hardware instruction where present).
 * busyPoll() makes the event loop poll briefly before it sleeps (see below).
 * A write log's syncer thread is in log_syncer.c.
 * memfd() makes an anonymous file in memory: the simulated file system's files
 * (src/io/memory-file-system.ts) are real descriptors that no disk lies behind.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>
#include <node_api.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <uv.h>

#include "log_syncer.h"

#define CHECK(env, call)                                                   \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error((env), NULL, "blockmirror_native: " #call " failed"); \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", syscall, strerror(err));
  napi_value error, code, msg;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &error);
  napi_create_int32(env, err, &code);
  napi_set_named_property(env, error, "errno", code);
  napi_throw(env, error);
  return NULL;
}

static int get_i64(napi_env env, napi_value value, int64_t *out) {
  double number;
  if (napi_get_value_double(env, value, &number) != napi_ok) return 0;
  if (number < 0 || number > 9007199254740991.0) return 0;
  *out = (int64_t)number;
  return 1;
}

/* memfd() -> a descriptor of a new, empty, anonymous file held in memory (read-write). */
static napi_value Memfd(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = memfd_create("blockmirror", MFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "memfd_create");
  napi_value out;
  CHECK(env, napi_create_int32(env, fd, &out));
  return out;
}

/* seek(fd, offset, whence) -> new offset, or -1 when whence is SEEK_DATA/SEEK_HOLE
 * and there is no more data past offset (ENXIO). */
static napi_value Seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, whence;
  int64_t offset;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      !get_i64(env, argv[1], &offset) ||
      napi_get_value_int32(env, argv[2], &whence) != napi_ok) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence): bad arguments");
    return NULL;
  }
  off_t result = lseek(fd, (off_t)offset, whence);
  napi_value out;
  if (result < 0) {
    if (errno == ENXIO) {
      CHECK(env, napi_create_double(env, -1, &out));
      return out;
    }
    return throw_errno(env, errno, "lseek");
  }
  CHECK(env, napi_create_double(env, (double)result, &out));
  return out;
}

/* preadNowait(fd, buffer, position) -> bytes read, -1 when the call would block (data
 * not in the page cache), -2 when the kernel or file system does not support RWF_NOWAIT.
 * Callers fall back to the thread pool, so the event loop never waits for the disk. */
static napi_value PreadNowait(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t position;
  void *data;
  size_t length;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok ||
      !get_i64(env, argv[2], &position)) {
    napi_throw_type_error(env, NULL, "preadNowait(fd, buffer, position): bad arguments");
    return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = length};
  ssize_t rc;
  do {
    rc = preadv2(fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (rc < 0 && errno == EINTR);
  double result = (double)rc;
  if (rc < 0) {
    if (errno == EAGAIN) result = -1;
    else if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) result = -2;
    else return throw_errno(env, errno, "preadv2");
  }
  napi_value out;
  CHECK(env, napi_create_double(env, result, &out));
  return out;
}


/* CRC32C (Castagnoli), as used by iSCSI, ext4 and NVMe: the SSE4.2 instruction where
 * the CPU has it, a table otherwise. Both give the same value (checked by the tests). */
static uint32_t crc32c_table[8][256];

static void crc32c_init_table(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t crc = n;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    crc32c_table[0][n] = crc;
  }
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t crc = crc32c_table[0][n];
    for (int k = 1; k < 8; k++) {
      crc = crc32c_table[0][crc & 0xff] ^ (crc >> 8);
      crc32c_table[k][n] = crc;
    }
  }
}

static uint32_t crc32c_software(uint32_t crc, const uint8_t *data, size_t length) {
  crc = ~crc;
  while (length >= 8) {
    uint64_t word;
    memcpy(&word, data, 8);
    word ^= crc;
    crc = crc32c_table[7][word & 0xff] ^ crc32c_table[6][(word >> 8) & 0xff] ^
          crc32c_table[5][(word >> 16) & 0xff] ^ crc32c_table[4][(word >> 24) & 0xff] ^
          crc32c_table[3][(word >> 32) & 0xff] ^ crc32c_table[2][(word >> 40) & 0xff] ^
          crc32c_table[1][(word >> 48) & 0xff] ^ crc32c_table[0][word >> 56];
    data += 8;
    length -= 8;
  }
  while (length-- > 0) crc = crc32c_table[0][(crc ^ *data++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

/* The CRC register is linear in its starting value: running `length` zero bytes through
 * it is a fixed 32x32 bit matrix. The tables below apply that matrix for the two block
 * sizes the hardware version works in, a byte of the register at a time. */
#define CRC32C_LONG 8192
#define CRC32C_SHORT 256
static uint32_t crc32c_zeros_long[4][256];
static uint32_t crc32c_zeros_short[4][256];

/* The matrix (as its 32 columns) times a vector. */
static uint32_t gf2_times(const uint32_t *matrix, uint32_t vector) {
  uint32_t sum = 0;
  for (int column = 0; vector != 0; column++, vector >>= 1)
    if (vector & 1u) sum ^= matrix[column];
  return sum;
}

/* out = a . b (both powers of the same matrix, so they commute). */
static void gf2_compose(uint32_t *out, const uint32_t *a, const uint32_t *b) {
  uint32_t result[32];
  for (int column = 0; column < 32; column++) result[column] = gf2_times(a, b[column]);
  memcpy(out, result, sizeof result);
}

/* tables[k][n]: the register n << 8k after `length` zero bytes. */
static void crc32c_zeros_tables(uint32_t tables[4][256], size_t length) {
  uint32_t power[32], result[32];
  /* One zero bit: shift right, and add the (reflected) polynomial if a one fell out. */
  power[0] = 0x82f63b78u;
  for (int column = 1; column < 32; column++) power[column] = 1u << (column - 1);
  for (int column = 0; column < 32; column++) result[column] = 1u << column;
  for (size_t bits = length * 8; bits != 0; bits >>= 1) {
    if (bits & 1u) gf2_compose(result, result, power);
    gf2_compose(power, power, power);
  }
  for (int k = 0; k < 4; k++)
    for (uint32_t n = 0; n < 256; n++) tables[k][n] = gf2_times(result, n << (8 * k));
}

static uint32_t crc32c_shift(uint32_t tables[4][256], uint32_t crc) {
  return tables[0][crc & 0xff] ^ tables[1][(crc >> 8) & 0xff] ^ tables[2][(crc >> 16) & 0xff] ^
         tables[3][crc >> 24];
}

#if defined(__x86_64__)
/* The crc32 instruction takes three cycles and can start one every cycle, so three
 * independent streams run about three times as fast as one: each run of 3 x `block` bytes
 * is checksummed as three parts at once, and the three registers are combined by moving
 * the first two past the zero bytes (`zeros`: `block` of them) that stand for the parts
 * after them. Returns the register after every whole run; `*data` and `*length` advance. */
__attribute__((target("sse4.2"))) static uint64_t crc32c_three_streams(uint64_t crc0, const uint8_t **data,
                                                                        size_t *length, size_t block,
                                                                        uint32_t zeros[4][256]) {
  const uint8_t *at = *data;
  size_t left = *length;
  while (left >= 3 * block) {
    uint64_t crc1 = 0, crc2 = 0;
    for (const uint8_t *end = at + block; at < end; at += 8) {
      uint64_t word0, word1, word2;
      memcpy(&word0, at, 8);
      memcpy(&word1, at + block, 8);
      memcpy(&word2, at + 2 * block, 8);
      crc0 = __builtin_ia32_crc32di(crc0, word0);
      crc1 = __builtin_ia32_crc32di(crc1, word1);
      crc2 = __builtin_ia32_crc32di(crc2, word2);
    }
    crc0 = crc32c_shift(zeros, (uint32_t)crc0) ^ crc1;
    crc0 = crc32c_shift(zeros, (uint32_t)crc0) ^ crc2;
    at += 2 * block;
    left -= 3 * block;
  }
  *data = at;
  *length = left;
  return crc0;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hardware(uint32_t crc, const uint8_t *data,
                                                                   size_t length) {
  uint64_t crc0 = crc32c_three_streams(~crc, &data, &length, CRC32C_LONG, crc32c_zeros_long);
  crc0 = crc32c_three_streams(crc0, &data, &length, CRC32C_SHORT, crc32c_zeros_short);
  while (length >= 8) {
    uint64_t word;
    memcpy(&word, data, 8);
    crc0 = __builtin_ia32_crc32di(crc0, word);
    data += 8;
    length -= 8;
  }
  uint32_t small = (uint32_t)crc0;
  while (length-- > 0) small = __builtin_ia32_crc32qi(small, *data++);
  return ~small;
}
#endif

static int crc32c_use_hardware = 0;

static uint32_t crc32c_update(uint32_t crc, const uint8_t *data, size_t length) {
#if defined(__x86_64__)
  if (crc32c_use_hardware) return crc32c_hardware(crc, data, length);
#endif
  return crc32c_software(crc, data, length);
}

/* crc32c(buffer, crc = 0, software = false) -> the CRC32C of buffer, continuing from crc.
 * `software` forces the table version, so tests can compare the two. */
static napi_value Crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data;
  size_t length;
  uint32_t crc = 0;
  bool software = false;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &data, &length) != napi_ok ||
      (argc >= 2 && napi_get_value_uint32(env, argv[1], &crc) != napi_ok)) {
    napi_throw_type_error(env, NULL, "crc32c(buffer, crc): bad arguments");
    return NULL;
  }
  if (argc >= 3 && napi_get_value_bool(env, argv[2], &software) != napi_ok) software = false;
  uint32_t result = software ? crc32c_software(crc, data, length) : crc32c_update(crc, data, length);
  napi_value out;
  CHECK(env, napi_create_uint32(env, result, &out));
  return out;
}

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int err;
} FallocateJob;

static void fallocate_execute(napi_env env, void *data) {
  (void)env;
  FallocateJob *job = data;
  int rc;
  do {
    rc = fallocate(job->fd, job->mode, (off_t)job->offset, (off_t)job->length);
  } while (rc < 0 && errno == EINTR);
  job->err = rc < 0 ? errno : 0;
}

/* Ends an async job: calls its Node-style callback with null, or with an Error that names
 * the system call and carries its errno, and drops the reference to the callback. */
static void call_back(napi_env env, napi_status status, napi_ref callback_ref, int err, const char *syscall) {
  napi_value callback, global, arg;
  napi_get_reference_value(env, callback_ref, &callback);
  napi_get_global(env, &global);
  char message[160];
  if (status != napi_ok || err != 0) {
    snprintf(message, sizeof message, "%s: %s", syscall, status != napi_ok ? "cancelled" : strerror(err));
    napi_value msg;
    napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &arg);
    if (status == napi_ok) {
      napi_value code;
      napi_create_int32(env, err, &code);
      napi_set_named_property(env, arg, "errno", code);
    }
  } else {
    napi_get_null(env, &arg);
  }
  napi_delete_reference(env, callback_ref);
  napi_call_function(env, global, callback, 1, &arg, NULL);
}

static void fallocate_complete(napi_env env, napi_status status, void *data) {
  FallocateJob *job = data;
  napi_delete_async_work(env, job->work);
  napi_ref callback = job->callback;
  int err = job->err;
  free(job);
  call_back(env, status, callback, err, "fallocate");
}

/* fallocate(fd, mode, offset, length, callback(err)) */
static napi_value Fallocate(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, mode;
  int64_t offset, length;
  napi_valuetype callback_type;
  if (argc != 5 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &mode) != napi_ok ||
      !get_i64(env, argv[2], &offset) || !get_i64(env, argv[3], &length) ||
      napi_typeof(env, argv[4], &callback_type) != napi_ok ||
      callback_type != napi_function) {
    napi_throw_type_error(env, NULL,
                          "fallocate(fd, mode, offset, length, callback): bad arguments");
    return NULL;
  }
  FallocateJob *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_errno(env, ENOMEM, "fallocate");
  job->fd = fd;
  job->mode = mode;
  job->offset = offset;
  job->length = length;
  napi_value name;
  CHECK(env, napi_create_string_utf8(env, "blockmirror.fallocate", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_reference(env, argv[4], 1, &job->callback));
  CHECK(env, napi_create_async_work(env, NULL, name, fallocate_execute, fallocate_complete,
                                    job, &job->work));
  CHECK(env, napi_queue_async_work(env, job->work));
  return NULL;
}

/* writePieces(fd, buffers, position, pieceBytes, callback(err)): writes the buffers back
 * to back at `position`, one pwritev per piece of the file that starts at a multiple of
 * pieceBytes, on the thread pool. The page cache sizes a folio by the write that creates
 * it; a file written in 1 MiB writes is cached in 1 MiB folios, and every later 4 KiB
 * write into one of them makes ext4 attach and walk a buffer head for each of its 256
 * blocks (15 us against 4 us for 64 KiB folios, docs/performance.md). */
#define PIECE_IOV_MAX 64

typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref buffers; /* keeps the buffers alive until the job is done */
  int fd;
  int64_t position;
  int64_t piece;
  size_t count;
  struct iovec *iov;
  int err;
} PiecesJob;

static void pieces_execute(napi_env env, void *data) {
  (void)env;
  PiecesJob *job = data;
  size_t index = 0, skip = 0;
  int64_t at = job->position;
  struct iovec part[PIECE_IOV_MAX];
  for (;;) {
    while (index < job->count && job->iov[index].iov_len == skip) {
      index++;
      skip = 0;
    }
    if (index == job->count) break;
    size_t want = (size_t)((at / job->piece + 1) * job->piece - at);
    int n = 0;
    size_t got = 0;
    for (size_t i = index, s = skip; i < job->count && got < want && n < PIECE_IOV_MAX; i++, s = 0) {
      size_t length = job->iov[i].iov_len - s;
      if (length == 0) continue;
      if (length > want - got) length = want - got;
      part[n].iov_base = (char *)job->iov[i].iov_base + s;
      part[n].iov_len = length;
      n++;
      got += length;
    }
    ssize_t written = pwritev(job->fd, part, n, (off_t)at);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) {
      job->err = errno;
      return;
    }
    if (written == 0) {
      job->err = EIO;
      return;
    }
    at += written;
    for (size_t left = (size_t)written; left > 0;) {
      size_t length = job->iov[index].iov_len - skip;
      if (length > left) {
        skip += left;
        left = 0;
      } else {
        left -= length;
        index++;
        skip = 0;
      }
    }
  }
  job->err = 0;
}

static void pieces_complete(napi_env env, napi_status status, void *data) {
  PiecesJob *job = data;
  napi_delete_reference(env, job->buffers);
  napi_delete_async_work(env, job->work);
  napi_ref callback = job->callback;
  int err = job->err;
  free(job->iov);
  free(job);
  call_back(env, status, callback, err, "pwritev");
}

static napi_value WritePieces(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t position, piece;
  uint32_t count = 0;
  bool is_array = false;
  napi_valuetype callback_type;
  if (argc != 5 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok || !get_i64(env, argv[2], &position) ||
      !get_i64(env, argv[3], &piece) || piece <= 0 || napi_typeof(env, argv[4], &callback_type) != napi_ok ||
      callback_type != napi_function) {
    napi_throw_type_error(env, NULL, "writePieces(fd, buffers, position, pieceBytes, callback): bad arguments");
    return NULL;
  }
  PiecesJob *job = calloc(1, sizeof *job);
  struct iovec *iov = calloc(count == 0 ? 1 : count, sizeof *iov);
  if (job == NULL || iov == NULL) {
    free(job);
    free(iov);
    return throw_errno(env, ENOMEM, "writePieces");
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value element;
    void *base;
    size_t length;
    if (napi_get_element(env, argv[1], i, &element) != napi_ok ||
        napi_get_buffer_info(env, element, &base, &length) != napi_ok) {
      free(job);
      free(iov);
      napi_throw_type_error(env, NULL, "writePieces: buffers must be Buffers");
      return NULL;
    }
    iov[i].iov_base = base;
    iov[i].iov_len = length;
  }
  job->fd = fd;
  job->position = position;
  job->piece = piece;
  job->count = count;
  job->iov = iov;
  CHECK(env, napi_create_reference(env, argv[1], 1, &job->buffers));
  CHECK(env, napi_create_reference(env, argv[4], 1, &job->callback));
  napi_value name;
  CHECK(env, napi_create_string_utf8(env, "blockmirror.writePieces", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_async_work(env, NULL, name, pieces_execute, pieces_complete, job, &job->work));
  CHECK(env, napi_queue_async_work(env, job->work));
  return NULL;
}

/*
 * Adaptive busy polling of the event loop.
 *
 * When the event loop has nothing to do it sleeps in epoll_wait, and the next request
 * wakes it. On a virtual machine that wake-up is an interprocessor interrupt and a
 * return from the idle vCPU's HLT: about 20 µs each way on the machine this was
 * measured on, against 2 µs for a process that did not sleep. A client at queue depth 1
 * waits for that on every request. So before the loop sleeps (a uv_prepare handle,
 * which runs just before the poll phase), it first polls the epoll descriptor without
 * blocking, yielding the CPU between polls, for up to a window; when an event comes
 * within it, the loop never slept.
 *
 * The window adapts the way KVM's halt polling does: a wait that a longer window would
 * have caught (at most the configured maximum) doubles it, starting at
 * BUSY_POLL_GROW_START_NS; a wait longer than the maximum halves it, down to nothing.
 * An idle node, or one whose clients pause between requests, therefore stops polling
 * after a few waits, and a node serving a client that answers quickly polls only as
 * long as that client takes. How long a wait lasted comes from libuv's idle-time
 * metric (the time the loop spent blocked in epoll_wait), which Node enables.
 *
 * Polling only pays when the CPU would otherwise be idle. When the yield between two
 * polls lets another thread run (the thread was switched out while still runnable),
 * the CPUs are busy: the peer node or the client on the same machine needs this one.
 * The poll then stops, and the window stays shut for BUSY_POLL_COOLDOWN_WAITS waits.
 */
#define BUSY_POLL_GROW_START_NS 10000
#define BUSY_POLL_COOLDOWN_WAITS 256

static struct {
  uv_loop_t *loop;
  uv_prepare_t prepare;
  uv_check_t check;
  int64_t max_ns;       /* 0: off */
  int64_t window_ns;    /* how long the next wait polls */
  bool waiting;         /* the poll phase that follows may block */
  bool slept;           /* the poll found nothing within the window; the loop sleeps */
  int64_t spun_ns;      /* how long this wait polled */
  uint64_t idle_before; /* uv_metrics_idle_time as the loop went to sleep */
  int cooldown;         /* waits left before the window may grow again */
  double hits, misses, yields, spun_total_ns;
} busy;

/* Times this thread was switched out while it could still run. */
static long involuntary_switches(void) {
  struct rusage usage;
  if (getrusage(RUSAGE_THREAD, &usage) != 0) return -1;
  return usage.ru_nivcsw;
}

static int64_t monotonic_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static void busy_prepare(uv_prepare_t *handle) {
  (void)handle;
  busy.waiting = false;
  /* Timers or immediates due: the poll phase will not block. */
  if (busy.max_ns == 0 || uv_backend_timeout(busy.loop) == 0) return;
  busy.waiting = true;
  busy.slept = false;
  busy.spun_ns = 0;
  if (busy.window_ns > 0) {
    struct pollfd events = { .fd = uv_backend_fd(busy.loop), .events = POLLIN };
    long switches = involuntary_switches();
    int64_t start = monotonic_ns();
    int64_t now = start;
    for (;;) {
      if (poll(&events, 1, 0) > 0) {
        busy.hits += 1;
        busy.spun_total_ns += (double)(monotonic_ns() - start);
        busy.waiting = false;
        return;
      }
      now = monotonic_ns();
      if (now - start >= busy.window_ns) {
        busy.misses += 1;
        break;
      }
      /* Another thread that is ready to run on this CPU goes first, and ends the poll. */
      sched_yield();
      if (involuntary_switches() != switches) {
        busy.yields += 1;
        busy.window_ns = 0;
        busy.cooldown = BUSY_POLL_COOLDOWN_WAITS;
        now = monotonic_ns();
        break;
      }
    }
    busy.spun_ns = now - start;
    busy.spun_total_ns += (double)busy.spun_ns;
  }
  busy.slept = true;
  busy.idle_before = uv_metrics_idle_time(busy.loop);
}

static void busy_check(uv_check_t *handle) {
  (void)handle;
  if (!busy.waiting || !busy.slept) return;
  busy.waiting = false;
  if (busy.cooldown > 0) {
    busy.cooldown -= 1;
    return;
  }
  int64_t waited = busy.spun_ns + (int64_t)(uv_metrics_idle_time(busy.loop) - busy.idle_before);
  if (waited > busy.max_ns) {
    busy.window_ns /= 2;
    if (busy.window_ns < BUSY_POLL_GROW_START_NS) busy.window_ns = 0;
  } else if (waited > busy.window_ns) {
    busy.window_ns = busy.window_ns == 0 ? BUSY_POLL_GROW_START_NS : busy.window_ns * 2;
    if (busy.window_ns > busy.max_ns) busy.window_ns = busy.max_ns;
  }
}

/* busyPoll(maxMicros): polls for up to maxMicros before the event loop sleeps; 0 stops. */
static napi_value BusyPoll(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double max_us;
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_double(env, argv[0], &max_us) != napi_ok || !(max_us >= 0 && max_us <= 1000000) ||
      max_us != (double)(int64_t)max_us) {
    napi_throw_type_error(env, NULL, "busyPoll(maxMicros): maxMicros must be an integer from 0 to 1000000");
    return NULL;
  }
  uv_loop_t *loop;
  CHECK(env, napi_get_uv_event_loop(env, &loop));
  if (busy.loop == NULL) {
    busy.loop = loop;
    uv_prepare_init(loop, &busy.prepare);
    uv_check_init(loop, &busy.check);
    /* Neither keeps the loop alive. */
    uv_unref((uv_handle_t *)&busy.prepare);
    uv_unref((uv_handle_t *)&busy.check);
  } else if (busy.loop != loop) {
    napi_throw_error(env, NULL, "busyPoll: already polling another thread's event loop");
    return NULL;
  }
  busy.max_ns = (int64_t)max_us * 1000;
  if (busy.window_ns > busy.max_ns) busy.window_ns = busy.max_ns;
  if (busy.max_ns > 0) {
    uv_prepare_start(&busy.prepare, busy_prepare);
    uv_check_start(&busy.check, busy_check);
  } else {
    uv_prepare_stop(&busy.prepare);
    uv_check_stop(&busy.check);
    busy.waiting = false;
    busy.window_ns = 0;
    busy.cooldown = 0;
  }
  return NULL;
}

/* busyPollStats() -> { maxMicros, windowMicros, hits, misses, yields, pollSeconds }, counters since the process started. */
static napi_value BusyPollStats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, value;
  CHECK(env, napi_create_object(env, &result));
  CHECK(env, napi_create_double(env, (double)busy.max_ns / 1000, &value));
  CHECK(env, napi_set_named_property(env, result, "maxMicros", value));
  CHECK(env, napi_create_double(env, busy.hits, &value));
  CHECK(env, napi_set_named_property(env, result, "hits", value));
  CHECK(env, napi_create_double(env, busy.misses, &value));
  CHECK(env, napi_set_named_property(env, result, "misses", value));
  CHECK(env, napi_create_double(env, busy.yields, &value));
  CHECK(env, napi_set_named_property(env, result, "yields", value));
  CHECK(env, napi_create_double(env, busy.spun_total_ns / 1e9, &value));
  CHECK(env, napi_set_named_property(env, result, "pollSeconds", value));
  CHECK(env, napi_create_double(env, (double)busy.window_ns / 1000, &value));
  CHECK(env, napi_set_named_property(env, result, "windowMicros", value));
  return result;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn, value;
  crc32c_init_table();
  crc32c_zeros_tables(crc32c_zeros_long, CRC32C_LONG);
  crc32c_zeros_tables(crc32c_zeros_short, CRC32C_SHORT);
#if defined(__x86_64__)
  __builtin_cpu_init();
  crc32c_use_hardware = __builtin_cpu_supports("sse4.2");
#endif
  CHECK(env, napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, Crc32c, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "crc32c", fn));
  CHECK(env, napi_create_function(env, "seek", NAPI_AUTO_LENGTH, Seek, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "seek", fn));
  CHECK(env, napi_create_function(env, "preadNowait", NAPI_AUTO_LENGTH, PreadNowait, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "preadNowait", fn));
  CHECK(env, napi_create_function(env, "fallocate", NAPI_AUTO_LENGTH, Fallocate, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "fallocate", fn));
  CHECK(env, napi_create_function(env, "writePieces", NAPI_AUTO_LENGTH, WritePieces, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "writePieces", fn));
  CHECK(env, napi_create_function(env, "busyPoll", NAPI_AUTO_LENGTH, BusyPoll, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "busyPoll", fn));
  CHECK(env, napi_create_function(env, "busyPollStats", NAPI_AUTO_LENGTH, BusyPollStats, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "busyPollStats", fn));
  CHECK(env, napi_create_function(env, "memfd", NAPI_AUTO_LENGTH, Memfd, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "memfd", fn));
  log_syncer_register(env, exports);
  CHECK(env, napi_create_int32(env, SEEK_DATA, &value));
  CHECK(env, napi_set_named_property(env, exports, "SEEK_DATA", value));
  CHECK(env, napi_create_int32(env, SEEK_HOLE, &value));
  CHECK(env, napi_set_named_property(env, exports, "SEEK_HOLE", value));
  CHECK(env, napi_create_int32(env, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, &value));
  CHECK(env, napi_set_named_property(env, exports, "FALLOC_PUNCH_HOLE", value));
  CHECK(env, napi_create_int32(env, FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE, &value));
  CHECK(env, napi_set_named_property(env, exports, "FALLOC_ZERO_RANGE", value));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
