// miniprogram.js against a real paypush, with stand-ins for the platform
// objects only: `wx` (WeChat: statusCode, header) and `my` (Alipay: status,
// headers, `multiple: true` sockets), each built on Node's fetch and
// WebSocket.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { waitForPayment } from '../miniprogram.js';
import { freshId, recorder, startPaypush, until } from './helpers.js';

const SECRET = 'a subscribe secret for the mini-program tests';

/** A SocketTask over Node's WebSocket; `refuse` makes connectSocket fail. */
function socketTask(url, { refuse } = {}) {
  const socket = new WebSocket(url);
  const task = {
    onOpen(cb) { socket.onopen = () => cb({}); },
    onMessage(cb) { socket.onmessage = (e) => cb({ data: e.data }); },
    onClose(cb) { socket.onclose = (e) => cb({ code: e.code, reason: e.reason }); },
    onError(cb) { socket.onerror = () => cb({ errMsg: 'connectSocket:fail' }); },
    close({ code }) { socket.close(code); },
  };
  if (refuse) socket.close();
  return task;
}

/** Runs `options.success`/`fail` of a request over fetch; shaped by `shape`. */
function request(options, shape) {
  const control = new AbortController();
  const timer = options.timeout ? setTimeout(() => control.abort(), options.timeout) : 0;
  assert.equal(options.method, 'GET');
  assert.equal(options.dataType, 'text');
  fetch(options.url, { signal: control.signal })
    .then(async (res) => options.success(shape(res.status, await res.text(), Object.fromEntries(res.headers))))
    .catch((e) => options.fail({ errMsg: 'request:fail ' + e.message, errorMessage: e.message }))
    .finally(() => clearTimeout(timer));
  return { abort: () => control.abort() };
}

const PLATFORMS = {
  wx: ({ refuseSockets } = {}) => ({
    request: (o) => request(o, (statusCode, data, header) => ({ statusCode, data, header })),
    connectSocket: (o) => socketTask(o.url, { refuse: refuseSockets }),
  }),
  my: ({ refuseSockets } = {}) => ({
    request: (o) => request(o, (status, data, headers) => ({ status, data, headers })),
    connectSocket: (o) => {
      assert.equal(o.multiple, true, 'Alipay returns a SocketTask only with multiple: true');
      return socketTask(o.url, { refuse: refuseSockets });
    },
  }),
};

let paypush;
let signed;
before(async () => {
  paypush = await startPaypush(['--push-timeout', '1s']);
  signed = await startPaypush([], { env: { PAYPUSH_SUBSCRIBE_SECRET: SECRET } });
});
after(async () => {
  await paypush.stop();
  await signed.stop();
});

for (const [name, make] of Object.entries(PLATFORMS)) {
  describe(`mini-program (${name})`, () => {
    for (const transport of ['ws', 'poll']) {
      test(`${transport}: the outcome, after the server's timeout and a new wait`, async () => {
        const id = freshId();
        const seen = recorder();
        const outcome = waitForPayment(id, { platform: make(), base: paypush.base, transports: [transport], ...seen });
        await seen.waiting(transport === 'ws' ? 2 : 3);
        await paypush.callback(id, 'CLOSED');
        const got = await outcome;
        assert.equal(got.status, 'CLOSED');
        assert.equal(got.message, '订单已关闭');
        assert.equal(got.payRecordId, id);
      });
    }

    test('the WebSocket first by default, no EventSource', async () => {
      const id = freshId();
      const seen = recorder();
      globalThis.EventSource = class { constructor() { throw new Error('not in a mini-program'); } };
      try {
        const outcome = waitForPayment(id, { platform: make(), base: paypush.base, ...seen });
        await seen.waiting();
        await paypush.callback(id);
        assert.equal((await outcome).status, 'SUCCESS');
        assert.deepEqual(seen.states.slice(0, 2), ['connecting:ws', 'waiting:ws']);
      } finally {
        delete globalThis.EventSource;
      }
    });

    test('a socket that cannot open: long-poll instead', async () => {
      const id = freshId();
      const seen = recorder();
      const outcome = waitForPayment(id, { platform: make({ refuseSockets: true }), base: paypush.base, ...seen });
      await seen.waiting();
      await paypush.callback(id);
      assert.equal((await outcome).status, 'SUCCESS');
      assert.deepEqual(seen.states, ['connecting:ws', 'fallback:poll', 'connecting:poll', 'waiting:poll']);
    });

    test('the token passes; a wrong one rejects with invalid_token 403', async () => {
      const id = freshId();
      const token = signed.token(SECRET, id);
      const seen = recorder();
      const outcome = waitForPayment(id, { platform: make(), base: signed.base, token, ...seen });
      await seen.waiting();
      await signed.callback(id);
      assert.equal((await outcome).status, 'SUCCESS');
      for (const transport of ['ws', 'poll']) {
        await assert.rejects(
          waitForPayment(freshId(), { platform: make(), base: signed.base, token, transports: [transport] }),
          (e) => e.code === 'invalid_token' && e.status === 403,
        );
      }
    });

    test('abort rejects with the reason and leaves no waiter', async () => {
      const control = new AbortController();
      const seen = recorder();
      const outcome = waitForPayment(freshId(), { platform: make(), base: paypush.base, signal: control.signal, ...seen });
      await seen.waiting();
      control.abort(new Error('page hidden'));
      await assert.rejects(outcome, { message: 'page hidden' });
      await until('no waiter left', async () => (await paypush.metric('paypush_streams_open')) === 0);
    });
  });
}

test('without a platform or a base: a TypeError', async () => {
  await assert.rejects(waitForPayment('1', { base: paypush.base }), TypeError);
  await assert.rejects(waitForPayment('1', { platform: PLATFORMS.wx() }), TypeError);
});
