/*
 * A write log's syncer: a thread of its own that makes the log durable with fdatasync,
 * one sync after another for as long as somebody waits and something new was written.
 *
 * Why not the libuv thread pool: with the pool, each sync ends with a hand-off to the
 * event loop, and the next one starts only once the loop has run the completion and
 * queued another job, which wakes a pool thread again. On a small machine those two
 * wake-ups took longer than the fdatasync itself (docs/performance.md, "Group commit at
 * depth 32"). Here the thread starts the next sync the moment the last one returns,
 * covering everything written meanwhile; the event loop learns of each through a
 * thread-safe function, in the background.
 *
 * The log's owner (JavaScript) tells the syncer two things:
 *   note(fd, seq)  entries through seq are written (in the page cache) in partition fd;
 *   want(seq)      somebody waits for seq to be durable (a FUA write, a flush, a sync ahead),
 *                  and the thread should sync if it is idle.
 * The thread syncs while the highest seq wanted is not durable and more was written than
 * is durable. A sync covers what was noted before it started: it reads `appended` and the
 * set of partitions written since the last sync as it starts, and records that seq as
 * durable once every one of those partitions' fdatasync returned.
 *
 * syncNow() runs a sync on the caller's thread when the syncer is idle: at queue depth 1
 * the event loop has nothing else to do, and a hand-off would only add two wake-ups.
 *
 * A failed fdatasync is never retried (Linux may have dropped the pages it could not write
 * and marked them clean; a later sync could succeed without them): the error is kept,
 * reported, and the syncer syncs no more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

#include "log_syncer.h"

#define SYNCER_FDS_MAX 1024

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  napi_threadsafe_function tsfn;
  bool started;
  bool stop;
  bool busy;           /* a sync runs (on the thread or in syncNow) */
  bool notify_queued;  /* a call to the event loop is queued and has not run yet */
  bool referenced;     /* the event loop is kept alive: a seq wanted is not durable yet */
  int err;             /* the first failed fdatasync's errno: sticky */
  int fail_next;       /* fault injection: the next sync fails with this errno */
  double appended;     /* entries through this seq are written */
  double wanted;       /* the highest seq somebody waits for */
  double durable;      /* entries through this seq are durable */
  double syncs;        /* syncs done */
  int *dirty;          /* partitions (fds) written since the last sync started */
  int dirty_count;
  int fds_max;
} Syncer;

/* An Error as Node's fs module makes them: "EIO: Input/output error, fdatasync", with code, errno and syscall. */
static napi_value errno_error(napi_env env, int err, const char *syscall) {
  char name[32];
  const char *known = strerrorname_np(err);
  if (known != NULL) snprintf(name, sizeof name, "%s", known);
  else snprintf(name, sizeof name, "E%d", err);
  char message[200];
  snprintf(message, sizeof message, "%s: %s, %s", name, strerror(err), syscall);
  napi_value error, value;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &value);
  napi_create_error(env, NULL, value, &error);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, error, "code", value);
  napi_create_int32(env, -err, &value);
  napi_set_named_property(env, error, "errno", value);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &value);
  napi_set_named_property(env, error, "syscall", value);
  return error;
}

static napi_value syncer_throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, errno_error(env, err, syscall));
  return NULL;
}

/* Called with the lock held: whether a sync should start now. */
static bool sync_due(const Syncer *s) {
  return !s->busy && s->err == 0 && s->wanted > s->durable && s->appended > s->durable;
}

/*
 * Called with the lock held and `busy` set by the caller: syncs what was noted, with the
 * lock released meanwhile, and records the result. Returns the errno, or 0.
 */
static int sync_noted(Syncer *s) {
  double target = s->appended;
  int count = s->dirty_count;
  int fds[SYNCER_FDS_MAX];
  memcpy(fds, s->dirty, (size_t)count * sizeof *fds);
  s->dirty_count = 0;
  int err = s->fail_next;
  s->fail_next = 0;
  pthread_mutex_unlock(&s->lock);
  for (int i = 0; i < count && err == 0; i++) {
    while (fdatasync(fds[i]) != 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
  }
  pthread_mutex_lock(&s->lock);
  s->busy = false;
  s->syncs += 1;
  if (err != 0) {
    if (s->err == 0) s->err = err;
  } else if (target > s->durable) {
    s->durable = target;
  }
  return err;
}

/*
 * On the event loop's thread, with the lock held: keeps the loop alive while somebody waits
 * for a sync or its report is queued, and only then (an idle syncer does not keep the
 * process from exiting). A report queued by a sync that made everything wanted durable
 * must still arrive: its waiters are resolved only by it.
 */
static void update_ref(napi_env env, Syncer *s) {
  bool waiting = s->notify_queued || (s->err == 0 && s->wanted > s->durable);
  if (waiting == s->referenced || s->tsfn == NULL) return;
  s->referenced = waiting;
  if (waiting) napi_ref_threadsafe_function(env, s->tsfn);
  else napi_unref_threadsafe_function(env, s->tsfn);
}

static void *syncer_main(void *data) {
  Syncer *s = data;
  pthread_mutex_lock(&s->lock);
  for (;;) {
    while (!s->stop && !sync_due(s)) pthread_cond_wait(&s->cond, &s->lock);
    if (s->stop) break;
    s->busy = true;
    sync_noted(s);
    /* No thread-safe function any more: the environment is being torn down. */
    if (!s->notify_queued && s->tsfn != NULL) {
      s->notify_queued = true;
      /* Never blocks: the queue is unbounded, and at most one call is queued at a time. */
      napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
    }
  }
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* Builds the callback's arguments (durableSeq, syncs, error | null) under the lock. */
static void state_values(napi_env env, Syncer *s, napi_value out[3]) {
  pthread_mutex_lock(&s->lock);
  double durable = s->durable, syncs = s->syncs;
  int err = s->err;
  pthread_mutex_unlock(&s->lock);
  napi_create_double(env, durable, &out[0]);
  napi_create_double(env, syncs, &out[1]);
  if (err == 0) napi_get_null(env, &out[2]);
  else out[2] = errno_error(env, err, "fdatasync");
}

static void call_js(napi_env env, napi_value callback, void *context, void *data) {
  (void)data;
  Syncer *s = context;
  if (env == NULL) return; /* closing: nothing more reaches JavaScript */
  pthread_mutex_lock(&s->lock);
  s->notify_queued = false;
  update_ref(env, s);
  pthread_mutex_unlock(&s->lock);
  napi_value global, argv[3];
  napi_get_global(env, &global);
  state_values(env, s, argv);
  napi_call_function(env, global, callback, 3, argv, NULL);
}

/* Stops the thread (after the sync it runs, if any) and lets the callback go. */
static void syncer_stop(Syncer *s) {
  if (!s->started) return;
  s->started = false;
  pthread_mutex_lock(&s->lock);
  s->stop = true;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
  pthread_join(s->thread, NULL);
  /* At exit Node may have finalized it already (tsfn_finalize). */
  if (s->tsfn != NULL) napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
}

/* The thread-safe function is gone: nothing refers to the syncer any more but its handle. */
static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Syncer *s = data;
  pthread_mutex_lock(&s->lock);
  s->tsfn = NULL;
  bool orphan = s->stop && s->dirty == NULL;
  pthread_mutex_unlock(&s->lock);
  if (orphan) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
  }
}

/* The handle was collected: stop the thread if close() was never called, and free. */
static void handle_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  Syncer *s = data;
  syncer_stop(s);
  pthread_mutex_lock(&s->lock);
  free(s->dirty);
  s->dirty = NULL;
  bool orphan = s->tsfn == NULL;
  pthread_mutex_unlock(&s->lock);
  if (orphan) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
  }
}

static Syncer *get_syncer(napi_env env, napi_value value) {
  void *data = NULL;
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external) return NULL;
  if (napi_get_value_external(env, value, &data) != napi_ok) return NULL;
  return data;
}

static bool get_seq(napi_env env, napi_value value, double *out) {
  if (napi_get_value_double(env, value, out) != napi_ok) return false;
  return *out >= 0 && *out <= 9007199254740991.0 && *out == (double)(int64_t)*out;
}

/* Throws "<usage>: bad arguments" as a TypeError. */
static napi_value bad_arguments(napi_env env, const char *usage) {
  char message[120];
  snprintf(message, sizeof message, "%s: bad arguments", usage);
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

/*
 * Unpacks a call with `count` arguments, the first a syncer handle. Returns the syncer, or
 * NULL after throwing a TypeError that shows `usage` (a bad count or handle).
 */
static Syncer *syncer_call(napi_env env, napi_callback_info info, size_t count, napi_value *argv, const char *usage) {
  size_t argc = count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  Syncer *s = argc == count ? get_syncer(env, argv[0]) : NULL;
  if (s == NULL) bad_arguments(env, usage);
  return s;
}

/* syncerOpen(fdsMax, durableSeq, onSynced(durableSeq, syncs, error)) -> handle */
static napi_value SyncerOpen(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fds_max;
  double durable;
  napi_valuetype callback_type;
  if (argc != 3 || napi_get_value_int32(env, argv[0], &fds_max) != napi_ok || fds_max < 1 ||
      fds_max > SYNCER_FDS_MAX || !get_seq(env, argv[1], &durable) ||
      napi_typeof(env, argv[2], &callback_type) != napi_ok || callback_type != napi_function) {
    napi_throw_type_error(env, NULL, "syncerOpen(fdsMax, durableSeq, onSynced): bad arguments");
    return NULL;
  }
  Syncer *s = calloc(1, sizeof *s);
  int *dirty = calloc((size_t)fds_max, sizeof *dirty);
  if (s == NULL || dirty == NULL) {
    free(s);
    free(dirty);
    return syncer_throw_errno(env, ENOMEM, "calloc");
  }
  s->dirty = dirty;
  s->fds_max = fds_max;
  s->durable = durable;
  s->appended = durable;
  s->wanted = durable;
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->cond, NULL);
  napi_value name, handle;
  napi_create_string_utf8(env, "blockmirror.logSyncer", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, s, tsfn_finalize, s, call_js, &s->tsfn) != napi_ok) {
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(dirty);
    free(s);
    napi_throw_error(env, NULL, "syncerOpen: cannot create the thread-safe function");
    return NULL;
  }
  /* An idle syncer does not keep the process alive. */
  napi_unref_threadsafe_function(env, s->tsfn);
  int err = pthread_create(&s->thread, NULL, syncer_main, s);
  if (err != 0) {
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s->dirty);
    s->dirty = NULL; /* tsfn_finalize frees the rest */
    s->stop = true;
    return syncer_throw_errno(env, err, "pthread_create");
  }
  s->started = true;
  if (napi_create_external(env, s, handle_finalize, NULL, &handle) != napi_ok) {
    handle_finalize(env, s, NULL);
    napi_throw_error(env, NULL, "syncerOpen: cannot create the handle");
    return NULL;
  }
  return handle;
}

/* syncerNote(handle, fd, seq): entries through seq are written, the last ones in fd. */
static napi_value SyncerNote(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  Syncer *s = syncer_call(env, info, 3, argv, "syncerNote(syncer, fd, seq)");
  int32_t fd;
  double seq;
  if (s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0 || !get_seq(env, argv[2], &seq)) {
    return bad_arguments(env, "syncerNote(syncer, fd, seq)");
  }
  pthread_mutex_lock(&s->lock);
  bool known = false;
  for (int i = 0; i < s->dirty_count && !known; i++) known = s->dirty[i] == fd;
  if (!known && s->dirty_count == s->fds_max) {
    pthread_mutex_unlock(&s->lock);
    napi_throw_range_error(env, NULL, "syncerNote: more partitions written than the syncer was opened for");
    return NULL;
  }
  if (!known) s->dirty[s->dirty_count++] = fd;
  if (seq > s->appended) s->appended = seq;
  /* No wake-up: a syncing thread sees this when its sync returns, an idle one is woken
   * by want() (the caller may rather sync now, on its own thread). */
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* syncerWant(handle, seq): somebody waits for seq to be durable. */
static napi_value SyncerWant(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  Syncer *s = syncer_call(env, info, 2, argv, "syncerWant(syncer, seq)");
  double seq;
  if (s == NULL) return NULL;
  if (!get_seq(env, argv[1], &seq)) return bad_arguments(env, "syncerWant(syncer, seq)");
  pthread_mutex_lock(&s->lock);
  if (seq > s->wanted) s->wanted = seq;
  update_ref(env, s);
  if (sync_due(s)) pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/*
 * syncerSyncNow(handle) -> the seq durable on return, having synced what was noted on this
 * thread if need be; -1 when the thread is syncing (its result comes through onSynced).
 * Throws the fdatasync error, now or from before.
 */
static napi_value SyncerSyncNow(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  Syncer *s = syncer_call(env, info, 1, argv, "syncerSyncNow(syncer)");
  if (s == NULL) return NULL;
  pthread_mutex_lock(&s->lock);
  double durable = -1;
  int err = s->err;
  if (err == 0 && !s->busy) {
    if (s->appended > s->durable) {
      s->busy = true;
      err = sync_noted(s);
      /* Wanted meanwhile beyond what this covered: the thread goes on. */
      if (sync_due(s)) pthread_cond_signal(&s->cond);
    }
    durable = s->durable;
    update_ref(env, s);
  }
  pthread_mutex_unlock(&s->lock);
  if (err != 0) return syncer_throw_errno(env, err, "fdatasync");
  napi_value result;
  napi_create_double(env, durable, &result);
  return result;
}

/* syncerState(handle) -> [durableSeq, syncs, error | null] */
static napi_value SyncerState(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  Syncer *s = syncer_call(env, info, 1, argv, "syncerState(syncer)");
  if (s == NULL) return NULL;
  napi_value values[3], result;
  state_values(env, s, values);
  napi_create_array_with_length(env, 3, &result);
  for (uint32_t i = 0; i < 3; i++) napi_set_element(env, result, i, values[i]);
  return result;
}

/* syncerFailNext(handle, errno): fault injection for tests; the next sync fails with errno
 * without calling fdatasync, as a disk that cannot write would make it. */
static napi_value SyncerFailNext(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  Syncer *s = syncer_call(env, info, 2, argv, "syncerFailNext(syncer, errno)");
  int32_t err;
  if (s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[1], &err) != napi_ok || err <= 0) return bad_arguments(env, "syncerFailNext(syncer, errno)");
  pthread_mutex_lock(&s->lock);
  s->fail_next = err;
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* syncerClose(handle): waits for a sync that runs, stops the thread; onSynced is not called again. */
static napi_value SyncerClose(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  Syncer *s = syncer_call(env, info, 1, argv, "syncerClose(syncer)");
  if (s == NULL) return NULL;
  syncer_stop(s);
  return NULL;
}

void log_syncer_register(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback fn;
  } functions[] = {
      {"syncerOpen", SyncerOpen},   {"syncerNote", SyncerNote},   {"syncerWant", SyncerWant},
      {"syncerSyncNow", SyncerSyncNow}, {"syncerState", SyncerState}, {"syncerClose", SyncerClose},
      {"syncerFailNext", SyncerFailNext},
  };
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value fn;
    napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, functions[i].name, fn);
  }
}
