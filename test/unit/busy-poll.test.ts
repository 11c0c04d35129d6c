// Busy polling of the event loop (native busyPoll, holdBusyPoll). A client in another
// process plays ping-pong with a server in this one: with polling on, the waits for its
// next message end while the loop polls (hits) and the window grows; once the client
// stops, waits outlast the maximum and the window falls back to nothing, so an idle
// process does not poll. With polling off nothing is counted. Bad arguments are refused.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { busyPollStats, holdBusyPoll } from '../../src/io/busy-poll.js';
import { native } from '../../src/io/native.js';

const ROUNDS = 2000;

/** Echoes every byte back; returns the port and a closer. */
async function echoServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const server = net.createServer({ noDelay: true }, (socket) => {
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert(address !== null && typeof address === 'object');
  return { port: address.port, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** A child process that sends one byte and waits for it ROUNDS times, then exits 0. */
function pingPong(port: number): Promise<void> {
  const script = `
    const socket = require('node:net').connect(${port}, '127.0.0.1', () => { socket.setNoDelay(true); socket.write('x'); });
    let left = ${ROUNDS};
    socket.on('data', (chunk) => {
      left -= chunk.length;
      if (left <= 0) { socket.end(); return; }
      socket.write('x');
    });
    socket.on('close', () => process.exit(left <= 0 ? 0 : 1));
    setTimeout(() => process.exit(2), 60000).unref();
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: 'inherit' });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`ping-pong client exited with ${code}`))));
  });
}

test('polling catches a quick client, and an idle loop stops polling', async () => {
  const server = await echoServer();
  const release = holdBusyPoll(1000);
  try {
    assert.equal(busyPollStats().maxMicros, 1000);
    // Each round trip is one wait of this loop for the client's next byte, a few tens of
    // microseconds, well within a window of up to 1 ms. What polling guarantees is that
    // such a wait, when it polls, can end while polling (a hit), and that polling takes
    // time; how many waits poll, and how many of those hit, depends on what else the two
    // cores are doing (a yield to another thread shuts the window for 256 waits), so that
    // is not checked. A run without a hit (the machine was busy throughout) is tried
    // again, at most three times in all.
    let before = busyPollStats();
    let after = before;
    let hits = 0;
    let counts = '';
    for (let attempt = 1; attempt <= 3; attempt += 1) {
      before = busyPollStats();
      await pingPong(server.port);
      after = busyPollStats();
      hits = after.hits - before.hits;
      counts = `hits ${hits}, misses ${after.misses - before.misses}, yields ${after.yields - before.yields}, attempt ${attempt}`;
      if (hits > 0) break;
    }
    assert(hits > 0, `no wait of ${ROUNDS} ended while polling (${counts})`);
    assert(after.pollSeconds > before.pollSeconds, 'no time spent polling');
    // Idle: every wait (a 5 ms timer) outlasts the maximum and halves the window.
    for (let wait = 0; wait < 20 && busyPollStats().windowMicros > 0; wait += 1) await sleep(5);
    assert.equal(busyPollStats().windowMicros, 0, 'an idle loop still polls');
    const idle = busyPollStats();
    await sleep(20);
    assert.equal(busyPollStats().hits, idle.hits, 'a hit while idle with a window of 0');
  } finally {
    release();
    await server.close();
  }
});

test('with polling off nothing polls', async () => {
  const server = await echoServer();
  try {
    assert.equal(busyPollStats().maxMicros, 0);
    const before = busyPollStats();
    await pingPong(server.port);
    const after = busyPollStats();
    assert.equal(after.hits, before.hits);
    assert.equal(after.misses, before.misses);
    assert.equal(after.pollSeconds, before.pollSeconds);
    assert.equal(after.windowMicros, 0);
  } finally {
    await server.close();
  }
});

test('the largest maximum held applies, until it is released', () => {
  const small = holdBusyPoll(20);
  const large = holdBusyPoll(300);
  assert.equal(busyPollStats().maxMicros, 300);
  large();
  assert.equal(busyPollStats().maxMicros, 20);
  large(); // a second release changes nothing
  assert.equal(busyPollStats().maxMicros, 20);
  small();
  assert.equal(busyPollStats().maxMicros, 0);
});

test('busyPoll refuses a maximum that is not a whole number of microseconds from 0 to 1 s', () => {
  for (const bad of [-1, 1.5, 1_000_001, Number.NaN, '50' as unknown as number]) {
    assert.throws(() => native.busyPoll(bad), /maxMicros must be an integer from 0 to 1000000/, String(bad));
  }
  assert.equal(busyPollStats().maxMicros, 0, 'a refused call changed the setting');
});
