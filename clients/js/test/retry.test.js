// Retries: through 503 and 429 answers (honouring Retry-After), a stand-in
// that closes every stream at once (a few attempts per second at most), a
// server that goes away; and aborting at each stage.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { waitForPayment } from '../paypush.js';
import { freshId, installEventSource, recorder, refuse, sleep, startPaypush, startStandIn, until } from './helpers.js';

installEventSource();

let paypush;
before(async () => {
  paypush = await startPaypush();
});
after(() => paypush.stop());

describe('503 and 429 are retried with back-off, honouring Retry-After', () => {
  for (const transport of ['sse', 'ws', 'poll']) {
    test(transport, async () => {
      // Two 503s with Retry-After: 1, then two 429s, then the real server:
      // whatever the transport shows of them (EventSource and WebSocket hide
      // the status; the library asks with fetch).
      const plan = [
        [503, 'over_capacity', { 'retry-after': '1' }],
        [503, 'over_capacity', { 'retry-after': '1' }],
        [429, 'too_many_streams', {}],
        [429, 'too_many_streams', {}],
      ];
      const answered = [];
      const next = (target) => {
        const step = plan.shift();
        if (!step) return false;
        answered.push([step[0], Date.now()]);
        refuse(target, ...step);
        return true;
      };
      const standIn = await startStandIn(paypush.base, (req, res, forward) => next(res) || forward(req, res), {
        upgrade: (req, socket) => !next(socket),
      });
      try {
        const id = freshId();
        const seen = recorder();
        const outcome = waitForPayment(id, { base: standIn.base, transports: [transport], retryDelay: 100, ...seen });
        await seen.waiting();
        await paypush.callback(id);
        assert.equal((await outcome).status, 'SUCCESS');
        assert.equal(plan.length, 0, 'every refusal was met');
        const times = standIn.hits.times.map(([, at]) => at);
        const after503 = times.find((at) => at > answered[1][1]) - answered[1][1];
        assert.ok(after503 >= 950, `asked again ${after503} ms after a 503 with Retry-After: 1`);
        assert.ok(seen.count('retry') >= 2, 'backed off');
        assert.ok(!seen.states.some((s) => s.startsWith('fallback')), seen.states.join());
        assert.ok(seen.states.includes(`reconnecting:${transport}`), seen.states.join());
      } finally {
        await standIn.stop();
      }
    });
  }
});

describe('a stand-in that closes every stream at once gets a few attempts per second at most', () => {
  for (const transport of ['sse', 'ws']) {
    test(transport, async () => {
      const standIn = await startStandIn(paypush.base, (req, res, forward) => forward(req, res, { cut: true }), {
        upgrade: () => 'cut',
      });
      const control = new AbortController();
      const seen = recorder();
      const waiting = waitForPayment(freshId(), {
        base: standIn.base, transports: [transport], signal: control.signal, ...seen,
      });
      await sleep(3000);
      control.abort();
      await assert.rejects(waiting, { name: 'AbortError' });
      await standIn.stop();
      const path = transport === 'sse' ? '/push' : '/ws';
      const attempts = standIn.hits.times.filter(([p]) => p === path).map(([, at]) => at);
      // Centrifuge-js once made 189 in 500 ms; here the gaps grow.
      assert.ok(attempts.length >= 2 && attempts.length <= 6, `${attempts.length} attempts in 3 s`);
      assert.ok(seen.count('pending') >= 1, 'each attempt saw PENDING before the cut');
      const gaps = attempts.slice(1).map((at, i) => at - attempts[i]);
      assert.ok(gaps.every((gap) => gap >= 250), `gaps ${gaps}`);
    });
  }
});

test('a server shutting down: the stream ends, the library backs off instead of looping', async () => {
  const own = await startPaypush();
  const standIn = await startStandIn(own.base, (req, res, forward) => forward(req, res));
  const control = new AbortController();
  const seen = recorder();
  const waiting = waitForPayment(freshId(), { base: standIn.base, signal: control.signal, ...seen });
  await seen.waiting();
  await own.stop();
  await until('reconnecting', () => seen.states.at(-1) === 'reconnecting:sse');
  const before = standIn.hits['/push'];
  await sleep(2500);
  control.abort();
  await assert.rejects(waiting, { name: 'AbortError' });
  await standIn.stop();
  const attempts = standIn.hits['/push'] - before;
  assert.ok(attempts <= 4, `${attempts} attempts in 2.5 s while the server was gone`);
});

describe('aborting rejects with the signal\'s reason within milliseconds, at every stage', () => {
  /** Starts a wait, lets `stage` set it up, aborts, and times the rejection. */
  async function abortAt(stage, { base = paypush.base, reason, ...options } = {}) {
    const control = new AbortController();
    const seen = recorder();
    const waiting = waitForPayment(freshId(), { base, signal: control.signal, ...options, ...seen });
    let rejected = null;
    waiting.catch((e) => {
      rejected = [e, performance.now()];
    });
    await stage(seen);
    const at = performance.now();
    control.abort(reason);
    await until('the rejection', () => rejected);
    const [error, when] = rejected;
    assert.ok(when - at < 50, `rejected ${when - at} ms after the abort`);
    return error;
  }

  test('already aborted: rejects at once with the reason', async () => {
    const reason = new Error('the customer left');
    await assert.rejects(waitForPayment('1', { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  });

  for (const transport of ['sse', 'ws', 'poll']) {
    test(`${transport}, waiting: AbortError by default; nothing stays on the server`, async () => {
      const error = await abortAt((seen) => seen.waiting(), { transports: [transport] });
      assert.equal(error.name, 'AbortError');
      await until('no waiter left', async () => (await paypush.metric('paypush_streams_open')) === 0);
    });
  }

  test('connecting (a stand-in that never answers): the given reason', async () => {
    const standIn = await startStandIn(paypush.base, () => {}, { upgrade: () => false });
    const reason = new Error('gone');
    try {
      for (const transport of ['sse', 'ws', 'poll']) {
        const error = await abortAt(() => sleep(100), { base: standIn.base, transports: [transport], reason });
        assert.equal(error, reason);
      }
    } finally {
      await standIn.stop();
    }
  });

  test('asking why a stream failed (the probe hangs)', async () => {
    let streams = 0;
    const standIn = await startStandIn(paypush.base, (req, res) => {
      streams += 1;
      if (streams === 1) res.socket.destroy();
    });
    try {
      const error = await abortAt(() => until('the probe', () => streams === 2), {
        base: standIn.base, transports: ['sse'],
      });
      assert.equal(error.name, 'AbortError');
    } finally {
      await standIn.stop();
    }
  });

  test('backing off after a 503 with Retry-After: 30', async () => {
    const standIn = await startStandIn(paypush.base, (req, res) => refuse(res, 503, 'over_capacity', { 'retry-after': '30' }));
    try {
      const error = await abortAt((seen) => until('the back-off', () => seen.count('retry') === 1), {
        base: standIn.base, transports: ['poll'],
      });
      assert.equal(error.name, 'AbortError');
    } finally {
      await standIn.stop();
    }
  });
});
