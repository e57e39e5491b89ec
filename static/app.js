// paypush demo checkout page: one order, its live status over Server-Sent
// Events, a form that plays the payment provider, and a log of what happened.
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

  /** Adds a log line: `kind` is an SSE event type or a connection change. */
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

  /** Opens (or reopens) the order's EventSource. */
  function connect(s) {
    if (s.closed) return;
    const url = '/push?' + query({ payRecordId: s.order.id });
    const source = new EventSource(url);
    s.source = source;
    const current = () => session === s && s.source === source && !s.closed;
    log('connect', 'new EventSource("' + url + '")');

    source.onopen = () => {
      if (!current()) return;
      s.retryMs = RETRY_FIRST_MS;
      setStream('open');
      log('open', 'stream open (200 text/event-stream)');
    };
    source.addEventListener('pending', (event) => {
      if (!current()) return;
      log('pending', event.data, event.lastEventId);
      step('subscribe');
      setState('waiting');
      setStream('open');
    });
    source.addEventListener('timeout', (event) => {
      if (!current()) return;
      log('timeout', event.data, event.lastEventId);
      setState('reconnecting', 'The server ended a long wait (event: timeout); the browser reconnects and waits again.');
      setStream('reconnecting');
    });
    source.onmessage = (event) => {
      if (!current()) return;
      log('message', event.data, event.lastEventId);
      let outcome;
      try {
        outcome = JSON.parse(event.data);
      } catch (e) {
        log('error', 'outcome is not JSON: ' + e.message);
        return;
      }
      finish(s, outcome);
    };
    source.onerror = () => {
      if (!current()) return;
      if (source.readyState === EventSource.CLOSED) {
        log('error', 'the browser closed the stream: the server refused it');
        probe(s, url);
      } else {
        log('error', 'stream ended or dropped; EventSource reconnects by itself');
      }
      if (el.status.dataset.state !== 'error') setState('reconnecting');
      setStream('reconnecting');
    };
  }

  /**
   * The browser gave up (an HTTP error such as 429 or 503): ask the server
   * why with a plain request, then retry with back-off unless the error is
   * one retrying cannot fix (a bad id or token).
   */
  async function probe(s, url) {
    s.source = null;
    const abort = new AbortController();
    let status = 0;
    let message = 'the server could not be reached';
    try {
      const res = await fetch(url, { signal: abort.signal, headers: { Accept: 'text/event-stream' } });
      status = res.status;
      if (res.ok) {
        message = 'the server accepts the stream again';
      } else {
        const body = await res.json().catch(() => ({}));
        message = `${res.status} ${body.error || ''}: ${body.message || res.statusText}`;
      }
    } catch (e) {
      // Network error: keep retrying.
    } finally {
      abort.abort();
    }
    if (session !== s || s.closed) return;
    log('error', message);
    const permanent = status >= 400 && status < 500 && status !== 429;
    if (permanent) {
      setState('error', message);
      setStream('closed');
      return;
    }
    const wait = s.retryMs;
    s.retryMs = Math.min(s.retryMs * 2, RETRY_MAX_MS);
    log('connect', `reopening in ${wait / 1000} s`);
    s.timer = setTimeout(() => connect(s), wait);
  }

  /** The outcome arrived: show it, close the stream, say so. */
  function finish(s, outcome) {
    s.closed = true;
    if (s.source) s.source.close();
    s.source = null;
    const state = String(outcome.status || '').toLowerCase();
    setState(STATES[state] ? state : 'error');
    if (outcome.message) el.title.textContent = outcome.message;
    if (outcome.completedAt) {
      el.time.textContent = 'completedAt ' + outcome.completedAt;
      el.time.hidden = false;
    }
    ['subscribe', 'callback', 'push'].forEach(step);
    setStream('closed');
    log('close', 'outcome received: EventSource.close()');
  }

  function start(order) {
    if (session) {
      session.closed = true;
      clearTimeout(session.timer);
      if (session.source) session.source.close();
    }
    session = { order, source: null, closed: false, retryMs: RETRY_FIRST_MS, timer: 0 };
    el.log.replaceChildren();
    el.answer.hidden = true;
    el.form.reset();
    el.time.hidden = true;
    step();
    showOrder(order);
    setState('connecting');
    setStream('connecting');
    connect(session);
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
  el.newOrder.addEventListener('click', () => {
    history.replaceState(null, '', '/' + (token ? '?' + query({}) : ''));
    start(newOrder());
  });

  const watched = params.get('payRecordId');
  start(watched && ID_PATTERN.test(watched) ? watchedOrder(watched) : newOrder());
})();
