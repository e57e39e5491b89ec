// paypush-client: wait for a payment's outcome from paypush, over Server-Sent
// Events, a WebSocket or long-poll, whichever works where the code runs.
// A zero-dependency ES module; paypush serves this very file at /paypush.js.
//
//   import { waitForPayment } from 'https://pay.example.com/paypush.js';
//   const outcome = await waitForPayment('123', { signal, onState });
//
// See README.md beside this file for the options and the rules.

/** The options' defaults. */
const DEFAULTS = {
  base: '',
  transports: ['sse', 'ws', 'poll'],
  /** ms a connection may take to bring its first PENDING before it counts as failed. */
  connectTimeout: 5000,
  /** ms of the first back-off; it doubles per failed attempt up to maxRetryDelay. */
  retryDelay: 1000,
  maxRetryDelay: 30000,
};
/** The longest wait a long-poll asks for: the server's own cap (seconds). */
const POLL_WAIT_S = 25;
/** ms past its wait after which a long-poll that brought nothing is given up. */
const POLL_SLACK_MS = 10000;
/** A connection that stayed up this long (ms) resets the back-off. */
const STABLE_MS = 10000;
/** The longest Retry-After honoured (ms), against absurd values. */
const MAX_RETRY_AFTER_MS = 600000;
/** What each transport needs of the runtime. */
const NEEDS = { sse: 'EventSource', ws: 'WebSocket', poll: 'get' };

/**
 * Waits for the outcome of payment `payRecordId`. Resolves once with
 * `{ payRecordId, status, message, completedAt }`; rejects with an Error
 * whose `code` and `status` are the API's on a refusal retrying cannot fix,
 * or with `signal.reason` when aborted. Leaves nothing open behind it.
 */
export function waitForPayment(payRecordId, options = {}) {
  const opt = {};
  for (const key of Object.keys(DEFAULTS)) opt[key] = options[key] ?? DEFAULTS[key];
  const { signal, token, onState, onEvent } = options;
  const id = String(payRecordId);
  const base = String(opt.base).replace(/\/$/, '');
  const list = opt.transports.filter((t) => NEEDS[t]);
  // What the code runs on, looked up now; `runtime` replaces parts of it
  // (miniprogram.js passes the platform's request and connectSocket).
  const global = typeof globalThis === 'object' ? globalThis : {};
  const rt = {
    EventSource: global.EventSource,
    WebSocket: global.WebSocket,
    get: typeof fetch === 'function' ? fetchGet : undefined,
    ...options.runtime,
  };
  const has = (t) => typeof rt[NEEDS[t]] === 'function';

  return new Promise((resolve, reject) => {
    let done = false;
    let index = -1;
    /** Back-off steps taken since the last healthy connection. */
    let attempt = 0;
    /** The current connection (or probe, or back-off timer): closes it. */
    let close = null;
    let shown = '';
    /** Transports that have brought a PENDING in this wait. */
    const worked = new Set();
    const tried = new Set();

    const trace = (kind, text, eventId) => report(onEvent, kind, text, eventId);
    const transport = () => list[index];
    const state = (name) => {
      if (shown === name + transport()) return;
      shown = name + transport();
      report(onState, name, transport());
    };

    const finish = (error, outcome) => {
      if (done) return;
      done = true;
      stop();
      if (signal) signal.removeEventListener('abort', aborted);
      if (error) reject(error);
      else resolve(outcome);
    };
    const stop = () => {
      const c = close;
      close = null;
      if (c) c();
    };
    const aborted = () => finish(signal.reason ?? abortError());

    if (signal) {
      if (signal.aborted) return aborted();
      signal.addEventListener('abort', aborted);
    }

    // No URLSearchParams: mini-program runtimes lack it.
    const url = (path, extra) => {
      const q = { payRecordId: id, ...extra };
      if (token) q.token = token;
      return base + path + '?' + Object.keys(q).map((k) => k + '=' + encodeURIComponent(q[k])).join('&');
    };

    /** Moves on to the next transport that exists here; from the top after a back-off. */
    const fallback = () => {
      stop();
      let moved = index >= 0;
      for (let i = index + 1; i < list.length; i++) {
        if (!has(list[i])) {
          trace('fallback', `no ${NEEDS[list[i]]} here: ${list[i]} skipped`);
          moved = true;
          continue;
        }
        index = i;
        if (moved) {
          trace('fallback', `now ${list[i]}`);
          state('fallback');
        }
        return open();
      }
      if (index < 0) {
        return finish(apiError('no_transport', 0, 'none of ' + list.join(', ') + ' exists here'));
      }
      index = -1;
      while (!has(list[++index]));
      retry(0);
    };

    /** Opens the current transport's connection anew. */
    const open = () => {
      stop();
      if (done) return;
      state(tried.has(transport()) ? 'reconnecting' : 'connecting');
      tried.add(transport());
      const since = Date.now();
      let pending = false;
      const timer = setTimeout(() => {
        trace('error', `no PENDING within ${opt.connectTimeout} ms`);
        failed({ silent: true });
      }, opt.connectTimeout);
      let closeTransport = () => {};
      close = () => {
        clearTimeout(timer);
        closeTransport();
      };
      const mine = close;
      const live = () => !done && close === mine;
      const on = {
        pending() {
          if (!live()) return;
          clearTimeout(timer);
          pending = true;
          worked.add(transport());
          state('waiting');
        },
        outcome(o) {
          if (!live()) return;
          finish(null, {
            payRecordId: o.payRecordId, status: o.status, message: o.message, completedAt: o.completedAt,
          });
        },
        /** The server ended a wait on purpose: wait again at once. */
        timeout() {
          if (!live()) return;
          attempt = 0;
          open();
        },
        failed(why) {
          if (!live()) return;
          failed({ pending, ...why });
        },
      };
      const failed = (why) => {
        stop();
        if (pending && Date.now() - since >= STABLE_MS) attempt = 0;
        if (why.status !== undefined) return judge(why.status, why.body, why.retryAfter);
        if (why.pending || why.network) return retry(0);
        if (why.silent || why.broken) return worked.has(transport()) ? retry(0) : fallback();
        probe(why.probe);
      };
      try {
        closeTransport = OPENERS[transport()](on, url, base, trace, rt);
      } catch (e) {
        // A constructor that refuses the URL (a bad base, a CSP): next one.
        trace('error', String(e));
        failed({ broken: true });
      }
    };

    /**
     * A connection failed before PENDING without saying why (EventSource and
     * WebSocket hide HTTP answers): ask with fetch. Refused: that error; the
     * server answers 200: the transport itself is what fails here.
     */
    const probe = (path) => {
      if (!rt.get) return fallback();
      const request = rt.get(path || url('/status', {}), { timeout: opt.connectTimeout, probe: true });
      close = request.cancel;
      const mine = close;
      request.done.then(
        (res) => {
          if (done || close !== mine) return;
          stop();
          judge(res.status, parse(res.text), res.retryAfter);
        },
        () => {
          if (done || close !== mine) return;
          stop();
          trace('error', 'the server cannot be reached');
          retry(0);
        },
      );
    };

    /** What an HTTP answer (status, JSON error body) means: reject, fall back, or retry. */
    const judge = (status, body, retryAfter) => {
      if (status >= 200 && status < 300) {
        return worked.has(transport()) ? retry(0) : fallback();
      }
      const code = (body && body.error) || 'http_' + status;
      trace('error', `${status} ${code}`);
      if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
        return finish(apiError(code, status, (body && body.message) || `paypush refused the wait (${status})`));
      }
      retry(parseRetryAfter(retryAfter));
    };

    /** Opens the current transport again after the back-off (at least `floor` ms). */
    const retry = (floor) => {
      const step = Math.min(opt.maxRetryDelay, opt.retryDelay * 2 ** attempt);
      attempt += 1;
      const wait = Math.max(floor, Math.round(step * (0.5 + Math.random() / 2)));
      state('reconnecting');
      trace('retry', `reconnecting in ${wait} ms`);
      const timer = setTimeout(open, wait);
      close = () => clearTimeout(timer);
    };

    fallback();
  });
}

/** Each transport: opens its connection, reports through `on`, returns its closer. */
const OPENERS = {
  /** EventSource on /push: `pending`, then the outcome or `timeout`. */
  sse(on, url, base, trace, rt) {
    const address = url('/push', {});
    const source = new rt.EventSource(address);
    trace('connect', `new EventSource("${address}")`);
    const pending = (e) => {
      trace('pending', e.data, e.lastEventId);
      on.pending();
    };
    const timeout = (e) => {
      trace('timeout', e.data, e.lastEventId);
      on.timeout();
    };
    source.addEventListener('pending', pending);
    source.addEventListener('timeout', timeout);
    source.onopen = () => trace('open', 'stream open');
    source.onmessage = (e) => {
      trace('message', e.data, e.lastEventId);
      const outcome = parse(e.data);
      if (outcome) on.outcome(outcome);
      else on.failed({});
    };
    // Ended or refused: closed here, so EventSource never reconnects by itself.
    source.onerror = () => {
      trace('error', 'the stream ended or was refused');
      on.failed({ probe: address });
    };
    return () => {
      source.removeEventListener('pending', pending);
      source.removeEventListener('timeout', timeout);
      source.onopen = source.onmessage = source.onerror = null;
      source.close();
    };
  },

  /** WebSocket on /ws: frames PENDING, then the outcome; close `1000 timeout` at the deadline. */
  ws(on, url, base, trace, rt) {
    const origin = base || globalThis.location.origin;
    const address = origin.replace(/^http/, 'ws') + url('/ws', {}).slice(base.length);
    const socket = new rt.WebSocket(address);
    trace('connect', `new WebSocket("${address}")`);
    let ended = false;
    socket.onopen = () => trace('open', 'socket open');
    socket.onmessage = (e) => {
      const body = parse(e.data);
      if (body && body.status === 'PENDING') {
        trace('pending', e.data);
        on.pending();
      } else if (body) {
        trace('message', e.data);
        ended = true;
        on.outcome(body);
      }
    };
    socket.onclose = (e) => {
      trace('close', `close frame ${e.code}${e.reason ? ' ' + e.reason : ''}`);
      socket.onclose = null;
      if (ended) return;
      if (e.code === 1000 && e.reason === 'timeout') on.timeout();
      // Refused before the upgrade (the answer is hidden), or dropped.
      else on.failed({});
    };
    // Some runtimes (Node 20) report a refused upgrade by an error alone.
    socket.onerror = () => {
      trace('error', 'the socket failed or was refused');
      if (!ended) on.failed({});
    };
    return () => {
      socket.onopen = socket.onmessage = socket.onerror = null;
      // After the outcome the server's close frame is still worth a trace.
      if (!ended) socket.onclose = null;
      if (socket.readyState < 2) socket.close(1000);
    };
  },

  /** Long-poll on /status: one answer at once, then waits of 25 s each. */
  poll(on, url, base, trace, rt) {
    let request = null;
    const ask = (wait) => {
      const address = url('/status', { wait: String(wait) });
      trace('connect', 'GET ' + address);
      request = rt.get(address, { timeout: wait && wait * 1000 + POLL_SLACK_MS });
      const mine = request;
      request.done.then(
        (res) => {
          const body = parse(res.text) || {};
          if (res.status < 200 || res.status > 299) {
            return on.failed({ status: res.status, body, retryAfter: res.retryAfter });
          }
          if (body.status === 'PENDING') {
            trace('pending', `${res.status} ${res.text}`);
            on.pending();
            // PENDING is a healthy end of a wait: ask again at once.
            if (request === mine) ask(POLL_WAIT_S);
          } else if (body.status) {
            trace('message', `${res.status} ${res.text}`);
            on.outcome(body);
          } else {
            // Not paypush's answer (a captive portal, a proxy's page).
            on.failed({ broken: true });
          }
        },
        (e) => {
          if (request !== mine) return;
          trace('error', 'the long-poll failed: ' + ((e && e.message) || e));
          on.failed({ network: true });
        },
      );
    };
    ask(0);
    return () => {
      const last = request;
      request = null;
      last.cancel();
    };
  },
};

/**
 * GET with fetch: `{ done, cancel }`, `done` resolving with `{ status, text,
 * retryAfter }`. A probe reads no body of a 2xx answer (it may be a stream).
 */
function fetchGet(address, { timeout, probe }) {
  const control = new AbortController();
  const timer = timeout ? setTimeout(() => control.abort(), timeout) : 0;
  const done = fetch(address, { signal: control.signal, cache: 'no-store' })
    .then(async (res) => ({
      status: res.status,
      text: probe && res.ok ? '' : await res.text(),
      retryAfter: res.headers.get('retry-after'),
    }))
    .finally(() => clearTimeout(timer));
  return {
    done,
    cancel() {
      clearTimeout(timer);
      control.abort();
    },
  };
}

/** Calls the caller's callback; what it throws is reported, never in the library's way. */
function report(callback, ...args) {
  try {
    if (callback) callback(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    });
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function apiError(code, status, message) {
  const error = new Error(message);
  error.name = 'PaypushError';
  error.code = code;
  error.status = status;
  return error;
}

function abortError() {
  return typeof DOMException === 'function'
    ? new DOMException('The wait was aborted', 'AbortError')
    : Object.assign(new Error('The wait was aborted'), { name: 'AbortError' });
}

/** Retry-After in seconds or as an HTTP date, in ms (0 when absent). */
function parseRetryAfter(value) {
  if (!value) return 0;
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return ms > 0 ? Math.min(ms, MAX_RETRY_AFTER_MS) : 0;
}
