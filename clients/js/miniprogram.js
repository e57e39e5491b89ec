// paypush-client for mini-programs (WeChat `wx`, Alipay `my`): the same
// waitForPayment, over the platform's connectSocket (WebSocket /ws) and
// request (long-poll /status), which the caller passes in:
//
//   import { waitForPayment } from 'paypush-client/miniprogram';
//   const outcome = await waitForPayment(id, { platform: wx, base: 'https://pay.example.com' });
//
// Mini-programs have no EventSource, so the transports default to
// ['ws', 'poll']; `base` is required (a mini-program has no origin of its own).

import { waitForPayment as wait } from './paypush.js';

/**
 * Waits for the outcome of payment `payRecordId`, as paypush.js's
 * waitForPayment does, with `options.platform` (`wx` or `my`) as the runtime.
 */
export function waitForPayment(payRecordId, options = {}) {
  const { platform, base } = options;
  if (!platform || typeof platform.request !== 'function' || !base) {
    return Promise.reject(new TypeError('waitForPayment needs options.platform (wx or my) and options.base'));
  }
  return wait(payRecordId, {
    transports: ['ws', 'poll'],
    ...options,
    runtime: {
      EventSource: undefined,
      WebSocket: typeof platform.connectSocket === 'function' ? socketOver(platform) : undefined,
      get: (address, { timeout }) => requestOver(platform, address, timeout),
    },
  });
}

/** A GET through `platform.request`: `{ done, cancel }` as paypush.js wants it. */
function requestOver(platform, address, timeout) {
  let task = null;
  let cancelled = false;
  const done = new Promise((resolve, reject) => {
    task = platform.request({
      url: address,
      method: 'GET',
      dataType: 'text', // both platforms: the body as it came
      timeout: timeout || undefined,
      success(res) {
        const headers = res.header || res.headers || {}; // wx: header, my: headers
        const name = Object.keys(headers).find((k) => k.toLowerCase() === 'retry-after');
        resolve({
          status: res.statusCode || res.status, // wx: statusCode, my: status
          text: typeof res.data === 'string' ? res.data : JSON.stringify(res.data),
          retryAfter: name && headers[name],
        });
      },
      fail(e) {
        reject(new Error((e && (e.errMsg || e.errorMessage)) || 'request failed'));
      },
    });
  });
  return {
    done,
    cancel() {
      if (cancelled) return;
      cancelled = true;
      if (task && task.abort) task.abort();
    },
  };
}

/** A WebSocket-like class over `platform.connectSocket`'s SocketTask. */
function socketOver(platform) {
  return class MiniProgramSocket {
    constructor(address) {
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      // Later, never inside the constructor: the caller sets its handlers first.
      const fail = (e) => setTimeout(() => this.end(e), 0);
      // `multiple: true` makes Alipay return a SocketTask, as WeChat does.
      this.task = platform.connectSocket({ url: address, multiple: true, fail });
      this.task.onOpen(() => {
        this.readyState = 1;
        if (this.onopen) this.onopen({});
      });
      this.task.onMessage((res) => {
        if (this.onmessage) this.onmessage({ data: res.data });
      });
      this.task.onClose((res) => this.end(null, res));
      this.task.onError(fail);
    }

    end(error, res = {}) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (error && this.onerror) this.onerror(error);
      if (this.onclose) this.onclose({ code: res.code || 1006, reason: res.reason || '' });
    }

    close(code) {
      if (this.readyState > 1) return;
      this.readyState = 2;
      this.task.close({ code });
    }
  };
}
