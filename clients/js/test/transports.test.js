// waitForPayment against a real paypush, single process and Redis mode:
// each transport brings the outcome, waits again after the server's
// timeout, passes the token, and turns refusals into errors with the API's
// code and status.

import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { waitForPayment } from '../paypush.js';
import { freshId, installEventSource, recorder, startPaypush, startRedis, until } from './helpers.js';

installEventSource();

const TRANSPORTS = ['sse', 'ws', 'poll'];
const SECRET = 'a subscribe secret for the tests';

for (const mode of ['single process', 'Redis mode']) {
  describe(`against paypush (${mode})`, () => {
    let redis;
    let paypush;
    let signed;
    before(async () => {
      redis = mode === 'Redis mode' ? await startRedis() : undefined;
      // A 1 s push timeout: every wait below sees the server end it first.
      paypush = await startPaypush(['--push-timeout', '1s'], { redis });
      signed = await startPaypush([], { redis, env: { PAYPUSH_SUBSCRIBE_SECRET: SECRET } });
    });
    after(async () => {
      await paypush.stop();
      await signed.stop();
      if (redis) await redis.stop();
    });

    for (const transport of TRANSPORTS) {
      test(`${transport}: resolves with the outcome sent while it waits`, async () => {
        const id = freshId();
        const seen = recorder();
        const control = new AbortController();
        const outcome = waitForPayment(id, { base: paypush.base, transports: [transport], signal: control.signal, ...seen });
        await seen.waiting();
        assert.equal(getEventListeners(control.signal, 'abort').length, 1);
        await paypush.callback(id, 'FAILED');
        const got = await outcome;
        assert.deepEqual(Object.keys(got).sort(), ['completedAt', 'message', 'payRecordId', 'status']);
        assert.equal(got.payRecordId, id);
        assert.equal(got.status, 'FAILED');
        assert.equal(got.message, '支付失败');
        assert.match(got.completedAt, /^\d{4}-\d\d-\d\dT.*Z$/);
        assert.deepEqual(seen.states, [`connecting:${transport}`, `waiting:${transport}`]);
        assert.equal(getEventListeners(control.signal, 'abort').length, 0, 'no listener left on the signal');
        await until('no waiter left', async () => (await paypush.metric('paypush_streams_open')) === 0);
      });

      test(`${transport}: waits again at once after the server's timeout`, async () => {
        const id = freshId();
        const seen = recorder();
        const outcome = waitForPayment(id, { base: paypush.base, transports: [transport], ...seen });
        // The first wait ends at the 1 s push timeout; the second begins.
        await seen.waiting(transport === 'poll' ? 3 : 2);
        assert.equal(seen.count('retry'), 0, 'no back-off after a timeout');
        await paypush.callback(id, 'SUCCESS');
        assert.equal((await outcome).status, 'SUCCESS');
        if (transport !== 'poll') {
          assert.ok(seen.states.includes(`reconnecting:${transport}`), seen.states.join());
        }
        assert.ok(!seen.states.some((s) => s.startsWith('fallback')), seen.states.join());
      });

      test(`${transport}: a payment already done resolves at once`, async () => {
        const id = freshId();
        await paypush.callback(id, 'CLOSED');
        const got = await waitForPayment(id, { base: paypush.base, transports: [transport] });
        assert.equal(got.status, 'CLOSED');
        assert.equal(got.message, '订单已关闭');
      });

      test(`${transport}: passes the subscribe token`, async () => {
        const id = freshId();
        const seen = recorder();
        const token = signed.token(SECRET, id);
        const outcome = waitForPayment(id, { base: signed.base, token, transports: [transport], ...seen });
        await seen.waiting();
        await signed.callback(id);
        assert.equal((await outcome).status, 'SUCCESS');
      });

      test(`${transport}: a wrong token rejects with invalid_token 403`, async () => {
        const id = freshId();
        const wrong = signed.token(SECRET, String(Number(id) + 1));
        const seen = recorder();
        await assert.rejects(
          waitForPayment(id, { base: signed.base, token: wrong, transports: [transport], ...seen }),
          (e) => e instanceof Error && e.code === 'invalid_token' && e.status === 403 && /token/i.test(e.message),
        );
        assert.ok(!seen.states.some((s) => s.startsWith('fallback')), 'a refusal is no reason to fall back');
      });

      test(`${transport}: an invalid id rejects with invalid_pay_record_id 400`, async () => {
        await assert.rejects(
          waitForPayment('0123', { base: paypush.base, transports: [transport] }),
          (e) => e.code === 'invalid_pay_record_id' && e.status === 400,
        );
      });
    }

    test('default transports: SSE first', async () => {
      const id = freshId();
      const seen = recorder();
      const outcome = waitForPayment(id, { base: paypush.base, ...seen });
      await seen.waiting();
      await paypush.callback(id);
      assert.equal((await outcome).status, 'SUCCESS');
      assert.deepEqual(seen.states, ['connecting:sse', 'waiting:sse']);
    });

    test('ids above 2^53 stay exact', async () => {
      const id = '9007199254740993';
      await paypush.callback(id);
      assert.equal((await waitForPayment(id, { base: paypush.base })).payRecordId, id);
    });
  });
}
