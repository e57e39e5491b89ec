// paypush demo checkout page: one order, its live status over Server-Sent
// Events (or, by choice or when EventSource is missing, long-poll /status or
// a WebSocket on /ws), a form that plays the payment provider, and a log of
// the raw traffic.
// Plain JavaScript, no build step, no network resource but this server.
'use strict';

(() => {
  /** A payRecordId as the contract writes it: [1-9][0-9]*. */
  const ID_PATTERN = /^[1-9][0-9]*$/;
  /** How long the page waits before it reopens a stream the browser gave up on. */
  const RETRY_FIRST_MS = 3000;
  const RETRY_MAX_MS = 30000;
  /** Entries kept in the event log. */
  const LOG_LIMIT = 200;
  /** The longest wait a long-poll asks for; the server's own cap. */
  const LONG_POLL_WAIT_S = 25;
  /** The transports a person can choose, by the radio buttons' values. */
  const TRANSPORT_NAMES = { sse: 'EventSource /push', poll: 'long-poll /status', ws: 'WebSocket /ws' };
  /** Mini-program WebViews and old browsers lack it: then long-poll. */
  const HAS_EVENT_SOURCE = typeof window.EventSource === 'function';

  const SHOPS = [
    { name: '青柠咖啡 · Lime Coffee', items: ['燕麦拿铁 ×2 · Oat latte ×2', '手冲耶加雪菲 · Pour-over Yirgacheffe', '冷萃咖啡与可颂 · Cold brew & croissant'] },
    { name: '山海书店 · Mountain & Sea Books', items: ['《三体》精装 · The Three-Body Problem, hardcover', '城市散步地图 · City walking maps', '手账本与钢笔 · Notebook & fountain pen'] },
    { name: '小鹿烘焙 · Little Deer Bakery', items: ['草莓奶油蛋糕 · Strawberry cream cake', '全麦欧包 ×3 · Whole-wheat loaves ×3', '蛋挞礼盒 · Egg tart box'] },
    { name: '云朵花店 · Cloud Florist', items: ['向日葵花束 · Sunflower bouquet', '多肉小盆栽 · Succulent pot', '白玫瑰礼盒 · White rose box'] },
  ];

  /** What each state says: title (中文), detail (English). */
  const STATES = {
    connecting: ['正在连接…', 'Connecting to the payment stream'],
    waiting: ['等待支付', 'Waiting for the payment. The page is connected and hears the outcome the instant it happens.'],
    reconnecting: ['正在重新连接…', 'Reconnecting: the stream ended or dropped, and the browser opens it again by itself.'],
    success: ['支付成功', 'Payment successful. Thank you!'],
    failed: ['支付失败', 'The payment failed. Send another order to try again.'],
    closed: ['订单已关闭', 'The order was closed before it was paid.'],
    error: ['无法订阅', 'The server refused the stream.'],
  };

  const STREAM_STATES = {
    connecting: '推送连接：连接中 · Stream: connecting',
    open: '推送连接：已连接 · Stream: connected',
    reconnecting: '推送连接：重连中 · Stream: reconnecting',
    closed: '推送连接已关闭 · Stream closed',
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    merchant: $('merchant'), item: $('item'), amount: $('amount'), qr: $('qr'),
    id: $('pay-record-id'), watch: $('watch-link'), newOrder: $('new-order'),
    status: $('status'), title: $('status-title'), detail: $('status-detail'),
    stream: $('stream-state'), time: $('status-time'), steps: $('steps'),
    form: $('callback-form'), formId: $('form-pay-record-id'), send: $('send-callback'),
    answer: $('callback-answer'), http: $('callback-http'), note: $('callback-note'),
    json: $('callback-json'), log: $('event-log'),
    transports: document.querySelectorAll('input[name="transport"]'),
    transportNote: $('transport-note'),
  };

  const params = new URLSearchParams(location.search);
  /** A subscribe token in the page's own URL is passed on to /push. */
  const token = params.get('token');

  /** The current order and its stream; replaced as a whole by "new order". */
  let session = null;

  /** A fresh payRecordId from 1 to 2^53, as a decimal string. */
  function randomId() {
    const words = new Uint32Array(2);
    crypto.getRandomValues(words);
    const high = words[0] & 0x1fffff; // 21 bits + 32 bits = 53 bits
    return String(high * 2 ** 32 + words[1] + 1);
  }

  function pick(list) {
    return list[Math.floor(Math.random() * list.length)];
  }

  function newOrder() {
    const shop = pick(SHOPS);
    const cents = 990 + Math.floor(Math.random() * 29000);
    return { id: randomId(), merchant: shop.name, item: pick(shop.items), amount: (cents / 100).toFixed(2) };
  }

  function watchedOrder(id) {
    return { id, merchant: '观察已有订单 · Watching an existing payment', item: '金额由商户系统决定 · amount known to the shop', amount: null };
  }

  function query(extra) {
    const q = new URLSearchParams(extra);
    if (token) q.set('token', token);
    return q.toString();
  }

  function showOrder(order) {
    el.merchant.textContent = order.merchant;
    el.item.textContent = order.item;
    el.amount.textContent = order.amount || '';
    el.amount.parentElement.hidden = !order.amount;
    el.id.textContent = order.id;
    el.formId.value = order.id;
    el.formId.readOnly = true;
    el.qr.src = '/qr.svg?' + new URLSearchParams({ payRecordId: order.id });
    el.watch.href = '/?' + query({ payRecordId: order.id });
  }

  function setState(state, detail) {
    const [title, english] = STATES[state];
    el.status.dataset.state = state;
    el.title.textContent = title;
    el.detail.textContent = detail || english;
  }

  function setStream(state) {
    el.stream.dataset.stream = state;
    el.stream.textContent = STREAM_STATES[state];
  }

  /** Marks a step of "how it works" as done; no name: clears them all. */
  function step(name) {
    for (const li of el.steps.children) {
      if (!name) delete li.dataset.done;
      else if (li.dataset.step === name) li.dataset.done = 'true';
    }
  }

  function time() {
    const now = new Date();
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(now.getHours())}:${pad(now.getMinutes())}:${pad(now.getSeconds())}.${pad(now.getMilliseconds(), 3)}`;
  }

  /**
   * Adds a log line: `kind` is what came (`pending`, `message`, `timeout`)
   * or a connection change (`connect`, `open`, `request`, `error`, `close`).
   */
  function log(kind, text, id) {
    const li = document.createElement('li');
    li.className = 'entry';
    li.dataset.kind = kind;
    const at = document.createElement('time');
    at.textContent = time();
    const label = document.createElement('span');
    label.className = 'kind';
    label.textContent = kind;
    li.append(at, label);
    if (id) {
      const idSpan = document.createElement('span');
      idSpan.className = 'event-id';
      idSpan.textContent = 'id: ' + id;
      li.append(idSpan);
    }
    const body = document.createElement('code');
    body.textContent = text;
    li.append(body);
    el.log.prepend(li);
    while (el.log.children.length > LOG_LIMIT) el.log.lastElementChild.remove();
  }

  /** Opens (or reopens) the order's connection with its transport. */
  function connect(s) {
    if (s.closed) return;
    s.generation += 1;
    const open = { sse: connectSse, poll: connectPoll, ws: connectWs }[s.transport];
    open(s, s.generation);
  }

  /** True while connection number `gen` of `s` is the one that counts. */
  function live(s, gen) {
    return session === s && !s.closed && s.generation === gen;
  }

  /** Closes whatever the session has open; late callbacks of it are ignored. */
  function stop(s) {
    s.generation += 1;
    clearTimeout(s.timer);
    if (s.source) s.source.close();
    if (s.socket) s.socket.close(1000);
    if (s.abort) s.abort.abort();
    s.source = null;
    s.socket = null;
    s.abort = null;
  }

  /** A `PENDING` object arrived: the page is registered and waits. */
  function waiting(s) {
    s.retryMs = RETRY_FIRST_MS;
    step('subscribe');
    setState('waiting');
    setStream('open');
  }

  /** Reconnects after a back-off that doubles up to RETRY_MAX_MS. */
  function retry(s, gen) {
    if (!live(s, gen)) return;
    const wait = s.retryMs;
    s.retryMs = Math.min(s.retryMs * 2, RETRY_MAX_MS);
    if (el.status.dataset.state !== 'error') setState('reconnecting');
    setStream('reconnecting');
    log('connect', `reopening in ${wait / 1000} s`);
    s.timer = setTimeout(() => connect(s), wait);
  }

  /** Errors that retrying cannot fix: a bad id or token, a foreign origin. */
  function permanent(status) {
    return status >= 400 && status < 500 && status !== 429;
  }

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      log('error', 'not JSON: ' + e.message);
      return null;
    }
  }

  /** EventSource on /push: the browser reconnects by itself. */
  function connectSse(s, gen) {
    const url = '/push?' + query({ payRecordId: s.order.id });
    const source = new EventSource(url);
    s.source = source;
    log('connect', 'new EventSource("' + url + '")');

    source.onopen = () => {
      if (!live(s, gen)) return;
      s.retryMs = RETRY_FIRST_MS;
      setStream('open');
      log('open', 'stream open (200 text/event-stream)');
    };
    source.addEventListener('pending', (event) => {
      if (!live(s, gen)) return;
      log('pending', event.data, event.lastEventId);
      waiting(s);
    });
    source.addEventListener('timeout', (event) => {
      if (!live(s, gen)) return;
      log('timeout', event.data, event.lastEventId);
      setState('reconnecting', 'The server ended a long wait (event: timeout); the browser reconnects and waits again.');
      setStream('reconnecting');
    });
    source.onmessage = (event) => {
      if (!live(s, gen)) return;
      log('message', event.data, event.lastEventId);
      const outcome = parse(event.data);
      if (outcome) finish(s, outcome, 'outcome received: EventSource.close()');
    };
    source.onerror = () => {
      if (!live(s, gen)) return;
      if (source.readyState === EventSource.CLOSED) {
        log('error', 'the browser closed the stream: the server refused it');
        s.source = null;
        probe(s, gen, url);
      } else {
        log('error', 'stream ended or dropped; EventSource reconnects by itself');
      }
      if (el.status.dataset.state !== 'error') setState('reconnecting');
      setStream('reconnecting');
    };
  }

  /**
   * Long-poll on /status: one request answered at once (so the page shows
   * "waiting" without delay), then requests that wait up to 25 s each.
   */
  async function connectPoll(s, gen) {
    let wait = 0;
    while (live(s, gen)) {
      const url = '/status?' + query({ payRecordId: s.order.id, wait: String(wait) });
      const abort = new AbortController();
      s.abort = abort;
      log('request', 'GET ' + url);
      let res;
      let text;
      try {
        res = await fetch(url, { signal: abort.signal, cache: 'no-store' });
        text = await res.text();
      } catch (e) {
        if (!live(s, gen)) return;
        log('error', 'the long-poll failed: ' + e.message);
        retry(s, gen);
        return;
      }
      if (!live(s, gen)) return;
      const body = parse(text) || {};
      if (!res.ok) {
        const message = `${res.status} ${body.error || ''}: ${body.message || res.statusText}`;
        log('error', message);
        if (permanent(res.status)) {
          setState('error', message);
          setStream('closed');
          return;
        }
        retry(s, gen);
        return;
      }
      if (body.status !== 'PENDING') {
        log('message', `${res.status} ${text}`);
        finish(s, body, 'outcome received: no further long-poll');
        return;
      }
      log('pending', `${res.status} ${text}`);
      waiting(s);
      wait = LONG_POLL_WAIT_S;
    }
  }

  /** WebSocket on /ws: frames PENDING, then the outcome, then a close. */
  function connectWs(s, gen) {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const path = '/ws?' + query({ payRecordId: s.order.id });
    const socket = new WebSocket(scheme + location.host + path);
    s.socket = socket;
    let opened = false;
    log('connect', 'new WebSocket("' + scheme + location.host + path + '")');

    socket.onopen = () => {
      if (!live(s, gen)) return;
      opened = true;
      setStream('open');
      log('open', 'socket open (101 Switching Protocols)');
    };
    socket.onmessage = (event) => {
      if (!live(s, gen)) return;
      const body = parse(event.data);
      if (!body) return;
      if (body.status === 'PENDING') {
        log('pending', event.data);
        waiting(s);
        return;
      }
      log('message', event.data);
      s.socket = null; // the server closes it (1000 outcome)
      finish(s, body, 'outcome received: the server closes the socket');
    };
    socket.onclose = (event) => {
      if (session !== s) return;
      log('close', `close frame ${event.code}${event.reason ? ' ' + event.reason : ''}`);
      if (!live(s, gen)) return;
      s.socket = null;
      if (event.code === 1000 && event.reason === 'timeout') {
        setState('reconnecting', 'The server ended a long wait (close 1000 timeout); the page opens a new socket.');
        setStream('reconnecting');
        connect(s);
      } else if (!opened) {
        // Refused before the upgrade: the browser hides the HTTP answer,
        // so ask /status (same id and token checks) why.
        probe(s, gen, '/status?' + query({ payRecordId: s.order.id }));
      } else {
        retry(s, gen);
      }
    };
  }

  /**
   * The browser gave up (an HTTP error such as 429 or 503): ask the server
   * why with a plain request, then retry with back-off unless the error is
   * one retrying cannot fix (a bad id or token).
   */
  async function probe(s, gen, url) {
    const abort = new AbortController();
    let status = 0;
    let message = 'the server could not be reached';
    try {
      const res = await fetch(url, { signal: abort.signal, headers: { Accept: 'text/event-stream' } });
      status = res.status;
      if (res.ok) {
        message = 'the server accepts the request again';
      } else {
        const body = await res.json().catch(() => ({}));
        message = `${res.status} ${body.error || ''}: ${body.message || res.statusText}`;
      }
    } catch (e) {
      // Network error: keep retrying.
    } finally {
      abort.abort();
    }
    if (!live(s, gen)) return;
    log('error', message);
    if (permanent(status)) {
      setState('error', message);
      setStream('closed');
      return;
    }
    retry(s, gen);
  }

  /** The outcome arrived: show it, close the connection, say so. */
  function finish(s, outcome, how) {
    stop(s);
    s.closed = true;
    const state = String(outcome.status || '').toLowerCase();
    setState(STATES[state] ? state : 'error');
    if (outcome.message) el.title.textContent = outcome.message;
    if (outcome.completedAt) {
      el.time.textContent = 'completedAt ' + outcome.completedAt;
      el.time.hidden = false;
    }
    ['subscribe', 'callback', 'push'].forEach(step);
    setStream('closed');
    log('close', how);
  }

  function showTransport(transport) {
    el.status.dataset.transport = transport;
    for (const input of el.transports) input.checked = input.value === transport;
  }

  function start(order) {
    const transport = session ? session.transport : initialTransport();
    if (session) {
      stop(session);
      session.closed = true;
    }
    session = { order, transport, source: null, socket: null, abort: null, closed: false, retryMs: RETRY_FIRST_MS, timer: 0, generation: 0 };
    el.log.replaceChildren();
    el.answer.hidden = true;
    el.form.reset();
    el.time.hidden = true;
    step();
    showOrder(order);
    showTransport(transport);
    if (!HAS_EVENT_SOURCE) log('fallback', 'this browser has no EventSource: long-poll /status instead');
    setState('connecting');
    setStream('connecting');
    connect(session);
  }

  /** The transport chosen on the page: the same payment, watched anew. */
  function switchTransport(transport) {
    const s = session;
    stop(s);
    s.transport = transport;
    s.closed = false;
    s.retryMs = RETRY_FIRST_MS;
    showTransport(transport);
    el.time.hidden = true;
    log('transport', 'now watching through ' + TRANSPORT_NAMES[transport]);
    setState('connecting');
    setStream('connecting');
    connect(s);
  }

  /** `?transport=sse|poll|ws`, else EventSource, else (none) long-poll. */
  function initialTransport() {
    const asked = params.get('transport');
    const known = Object.prototype.hasOwnProperty.call(TRANSPORT_NAMES, asked);
    const transport = known ? asked : 'sse';
    return transport === 'sse' && !HAS_EVENT_SOURCE ? 'poll' : transport;
  }

  /** Posts the form with fetch (form-encoded) and shows the JSON answer. */
  async function sendCallback(event) {
    event.preventDefault();
    const body = new URLSearchParams(new FormData(el.form));
    el.send.disabled = true;
    let status = 0;
    let head;
    let text;
    let data = null;
    try {
      const res = await fetch(el.form.action, { method: 'POST', body });
      status = res.status;
      head = `HTTP ${res.status} ${res.statusText}`;
      text = await res.text();
      try {
        data = JSON.parse(text);
        text = JSON.stringify(data, null, 2);
      } catch (e) {
        // Not JSON: show it as it came.
      }
    } catch (e) {
      head = 'network error';
      text = String(e);
    } finally {
      el.send.disabled = false;
    }
    log('callback', `POST /pay-callback ${body} → ${status || 'failed'}`);
    el.http.textContent = head;
    el.note.textContent = note(status, data);
    el.json.textContent = text;
    el.answer.dataset.httpStatus = String(status);
    el.answer.dataset.duplicate = String(Boolean(data && data.duplicate));
    el.answer.dataset.seq = String(Number(el.answer.dataset.seq) + 1);
    el.answer.hidden = false;
    if (status === 200) step('callback');
  }

  function note(status, data) {
    if (status === 200 && data && data.duplicate) return '重复回调，未再推送 · duplicate: already recorded, nothing sent again';
    if (status === 200) return '已记录并推送 · recorded and pushed to every open stream';
    if (status === 409) return '冲突：以第一次结果为准 · conflict: the first outcome wins';
    if (status === 401) return '回调需要签名 · this server requires signed callbacks (paypush sign)';
    if (status === 0) return '';
    return (data && data.error) || '';
  }

  el.form.addEventListener('submit', sendCallback);
  for (const input of el.transports) {
    if (input.value === 'sse' && !HAS_EVENT_SOURCE) input.disabled = true;
    input.addEventListener('change', () => {
      if (input.checked && input.value !== session.transport) switchTransport(input.value);
    });
  }
  el.transportNote.hidden = HAS_EVENT_SOURCE;
  el.newOrder.addEventListener('click', () => {
    history.replaceState(null, '', '/' + (token ? '?' + query({}) : ''));
    start(newOrder());
  });

  const watched = params.get('payRecordId');
  start(watched && ID_PATTERN.test(watched) ? watchedOrder(watched) : newOrder());
})();
