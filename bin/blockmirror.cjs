#!/usr/bin/env node
// The `blockmirror` command's launcher. It sizes libuv's thread pool, which does the
// node's file I/O (volume writes, log fdatasync, consistency points), before anything
// can start the pool: an ES module is itself read through the pool, so the setting
// has to come from a CommonJS file that runs first. With the default four threads, a
// log fdatasync that durable writes wait for queues behind client writes; sixteen (as
// nbdkit and qemu-nbd use) measured 49% more FUA writes per second at queue depth 32.
// An operator's own UV_THREADPOOL_SIZE wins.
'use strict';

const path = require('node:path');
const { pathToFileURL } = require('node:url');

process.env.UV_THREADPOOL_SIZE ??= '16';
import(pathToFileURL(path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js')).href).catch((error) => {
  process.stderr.write(`blockmirror: cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(70);
});
