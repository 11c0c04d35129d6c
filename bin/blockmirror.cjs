#!/usr/bin/env node
// The `blockmirror` command's launcher. It sizes libuv's thread pool, which does the
// node's file I/O (volume writes, log fdatasync, consistency points), before anything
// can start the pool: an ES module is itself read through the pool, so the setting
// has to come from a CommonJS file that runs first. With the default four threads, a
// log fdatasync that durable writes wait for queues behind client writes; sixteen (as
// nbdkit and qemu-nbd use) measured 49% more FUA writes per second at queue depth 32.
// An operator's own UV_THREADPOOL_SIZE wins.
//
// It also lets V8's old generation grow to 5 times what a full garbage collection left
// live (1.1 to 4 times by default) before the next one. The payload of a write that is
// being mirrored lives until the peer has it, long enough to be moved to the old
// generation, where its buffer counts towards that limit; with the small heap a node has
// (about 10 MB), the default limit was reached every 17 ms: 1 MiB writes to a sync volume
// made 35 full collections a second, and node a spent 1.6 to 2.1 ms of CPU per MiB. With
// the wider limit, 1 collection a second and 1.0 ms per MiB (resident memory 119 MiB).
'use strict';

const path = require('node:path');
const { pathToFileURL } = require('node:url');
const v8 = require('node:v8');

process.env.UV_THREADPOOL_SIZE ??= '16';
v8.setFlagsFromString('--heap-growing-percent=400');
import(pathToFileURL(path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js')).href).catch((error) => {
  process.stderr.write(`blockmirror: cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(70);
});
