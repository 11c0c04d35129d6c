/*
 * The few file-system calls that Node's fs module does not expose and that a block
 * server needs: lseek with SEEK_DATA/SEEK_HOLE (to report holes truthfully) and
 * fallocate (to punch holes for TRIM and to zero ranges without writing zeroes).
 *
 * seek() is synchronous: it only reads extent metadata and returns at once.
 * preadNowait() is synchronous too, but never blocks: with RWF_NOWAIT the kernel answers
 * EAGAIN instead of waiting for the disk.
 * fallocate() runs on the libuv thread pool, since punching or zeroing a large range
 * may take milliseconds, and reports through a Node-style callback(err).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <node_api.h>

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

static void fallocate_complete(napi_env env, napi_status status, void *data) {
  FallocateJob *job = data;
  napi_value callback, global, arg;
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  if (status != napi_ok) {
    napi_value msg;
    napi_create_string_utf8(env, "fallocate: cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &arg);
  } else if (job->err != 0) {
    char message[160];
    snprintf(message, sizeof message, "fallocate: %s", strerror(job->err));
    napi_value msg, code;
    napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &arg);
    napi_create_int32(env, job->err, &code);
    napi_set_named_property(env, arg, "errno", code);
  } else {
    napi_get_null(env, &arg);
  }
  napi_call_function(env, global, callback, 1, &arg, NULL);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job);
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

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn, value;
  CHECK(env, napi_create_function(env, "seek", NAPI_AUTO_LENGTH, Seek, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "seek", fn));
  CHECK(env, napi_create_function(env, "preadNowait", NAPI_AUTO_LENGTH, PreadNowait, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "preadNowait", fn));
  CHECK(env, napi_create_function(env, "fallocate", NAPI_AUTO_LENGTH, Fallocate, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "fallocate", fn));
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
