/* A write log's syncer thread (log_syncer.c). */
#ifndef BLOCKMIRROR_LOG_SYNCER_H
#define BLOCKMIRROR_LOG_SYNCER_H

#include <node_api.h>

/* Adds syncerOpen, syncerNote, syncerWant, syncerSyncNow, syncerState, syncerFailNext and syncerClose. */
void log_syncer_register(napi_env env, napi_value exports);

#endif
