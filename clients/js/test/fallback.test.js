// Fallback from one transport to the next: a transport missing where the
// code runs, refused on the way (stand-ins in front of a real paypush), or
// silent past the connect deadline behind a buffering stand-in.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { waitForPayment } from '../paypush.js';
import { freshId, installEventSource, recorder, refuse, startPaypush, startStandIn, until } from './helpers.js';

installEventSource();

let paypush;
before(async () => {
  paypush = await startPaypush();
});
after(() => paypush.stop());

/** Runs `body` with these globals removed, then puts them back. */
async function without(names, body) {
  const saved = names.map((name) => globalThis[name]);
  for (const name of names) delete globalThis[name];
  try {
    return await body();
  } finally {
    names.forEach((name, i) => {
      globalThis[name] = saved[i];
    });
  }
}

/** Waits for a payment through `base`, pays it once waiting, returns what was seen. */
async function payThrough(base, options = {}) {
  const id = freshId();
  const seen = recorder();
  const outcome = waitForPayment(id, { base, ...options, ...seen });
  await seen.waiting();
  await paypush.callback(id);
  const got = await outcome;
  assert.equal(got.status, 'SUCCESS');
  assert.equal(got.payRecordId, id);
  return seen;
}

test('no EventSource: skipped, the WebSocket brings the outcome', async () => {
  const seen = await without(['EventSource'], () => payThrough(paypush.base));
  assert.deepEqual(seen.states, ['fallback:ws', 'connecting:ws', 'waiting:ws']);
  assert.ok(seen.events.some(([k, t]) => k === 'fallback' && t.includes('no EventSource')));
});

test('no EventSource and no WebSocket: long-poll brings the outcome', async () => {
  const seen = await without(['EventSource', 'WebSocket'], () => payThrough(paypush.base));
  assert.deepEqual(seen.states, ['fallback:poll', 'connecting:poll', 'waiting:poll']);
});

test('no transport at all: rejects with no_transport', async () => {
  await without(['EventSource', 'WebSocket'], () =>
    assert.rejects(
      waitForPayment('1', { base: paypush.base, transports: ['sse', 'ws'] }),
      (e) => e.code === 'no_transport' && e.status === 0,
    ));
});

test('an event stream refused on the way (an HTML page instead): falls back to the WebSocket', async () => {
  const standIn = await startStandIn(paypush.base, (req, res, forward) => {
    if (req.url.startsWith('/push')) {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<p>blocked by the office proxy</p>');
    } else {
      forward(req, res);
    }
  });
  try {
    const seen = await payThrough(standIn.base);
    assert.deepEqual(seen.states, ['connecting:sse', 'fallback:ws', 'connecting:ws', 'waiting:ws']);
  } finally {
    await standIn.stop();
  }
});

test('a WebSocket upgrade refused on the way: falls back to long-poll', async () => {
  const standIn = await startStandIn(paypush.base, (req, res, forward) => forward(req, res), {
    upgrade: (req, socket) => refuse(socket, 403, 'forbidden'),
  });
  try {
    const seen = await payThrough(standIn.base, { transports: ['ws', 'poll'] });
    assert.deepEqual(seen.states, ['connecting:ws', 'fallback:poll', 'connecting:poll', 'waiting:poll']);
  } finally {
    await standIn.stop();
  }
});

test('a buffering stand-in: the silent event stream gives way at the connect deadline', async () => {
  const standIn = await startStandIn(paypush.base, (req, res, forward) => forward(req, res, { buffer: true }));
  try {
    const started = Date.now();
    const seen = await payThrough(standIn.base, { connectTimeout: 500 });
    assert.deepEqual(seen.states, ['connecting:sse', 'fallback:ws', 'connecting:ws', 'waiting:ws']);
    assert.ok(Date.now() - started >= 500, 'waited for the deadline');
    const long = await payThrough(standIn.base, { connectTimeout: 500, transports: ['sse', 'poll'] });
    assert.deepEqual(long.states, ['connecting:sse', 'fallback:poll', 'connecting:poll', 'waiting:poll']);
  } finally {
    await standIn.stop();
  }
  assert.equal(await paypush.metric('paypush_streams_open'), 0, 'the silent stream was closed');
});

test('every transport failing: back to the first after a back-off, never a tight loop', async () => {
  const standIn = await startStandIn(paypush.base, (req, res) => {
    // A captive portal: every request gets its page.
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<p>log in to the hotel Wi-Fi first</p>');
  }, { upgrade: (req, socket) => socket.destroy() });
  const control = new AbortController();
  const seen = recorder();
  const waiting = waitForPayment('7', { base: standIn.base, signal: control.signal, ...seen });
  await new Promise((r) => setTimeout(r, 3000));
  control.abort();
  await assert.rejects(waiting, { name: 'AbortError' });
  await standIn.stop();
  const pushes = standIn.hits['/push'] || 0;
  assert.ok(pushes >= 2 && pushes <= 8, `${pushes} event streams in 3 s`);
  assert.deepEqual(seen.states.slice(0, 6), [
    'connecting:sse', 'fallback:ws', 'connecting:ws', 'fallback:poll', 'connecting:poll', 'reconnecting:sse',
  ]);
});

test('a callback that throws is reported and does not stop the wait', async () => {
  const id = freshId();
  let waiting = false;
  const reported = [];
  const outcome = waitForPayment(id, {
    base: paypush.base,
    transports: ['sse'],
    onState(state) {
      if (state !== 'waiting') return;
      waiting = true;
      throw new Error('a bug in the page');
    },
    onEvent(kind) {
      if (kind === 'connect') throw new Error('another bug');
    },
  });
  // What the library rethrows comes as uncaught exceptions, as it would in a page.
  const listeners = process.listeners('uncaughtException');
  process.removeAllListeners('uncaughtException');
  process.on('uncaughtException', (e) => reported.push(e.message));
  try {
    await until('waiting', () => waiting);
    await paypush.callback(id);
    assert.equal((await outcome).status, 'SUCCESS');
    await until('the errors reported', () => reported.includes('a bug in the page') && reported.includes('another bug'));
  } finally {
    process.removeAllListeners('uncaughtException');
    for (const listener of listeners) process.on('uncaughtException', listener);
  }
});
