// paypush demo checkout page: one order, its live status through paypush.js
// (Server-Sent Events, or by choice long-poll /status or a WebSocket on /ws,
// falling back to long-poll when EventSource is missing or fails), a form that
// plays the payment provider, and a log of the raw traffic.
// Plain JavaScript (an ES module), no build step, no network resource but
// this server.
import { waitForPayment } from '/paypush.js';

{
  /** A payRecordId as the contract writes it: [1-9][0-9]*. */
  const ID_PATTERN = /^[1-9][0-9]*$/;
  /** Entries kept in the event log. */
  const LOG_LIMIT = 200;
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
    reconnecting: ['正在重新连接…', 'Reconnecting: the wait ended or dropped, and the page opens it again by itself.'],
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

  /**
   * Watches the order's payment with paypush.js, starting with the session's
   * transport and falling back to long-poll; shows every state and logs
   * every event the library reports.
   */
  function connect(s) {
    const control = new AbortController();
    s.control = control;
    const live = () => session === s && s.control === control;
    waitForPayment(s.order.id, {
      token: token || undefined,
      transports: s.transport === 'poll' ? ['poll'] : [s.transport, 'poll'],
      signal: control.signal,
      onState(state, transport) {
        if (!live()) return;
        if (transport !== s.transport) {
          s.transport = transport;
          showTransport(transport);
        }
        // paypush.js logs the fallback itself (onEvent).
        if (state === 'fallback') return;
        if (state === 'waiting') step('subscribe');
        setState(state);
        setStream({ connecting: 'connecting', waiting: 'open', reconnecting: 'reconnecting' }[state]);
      },
      onEvent(kind, text, id) {
        if (session === s && (live() || s.closed)) log(kind, text, id);
      },
    }).then(
      (outcome) => {
        if (live()) finish(s, outcome, 'outcome received: paypush.js closed the connection');
      },
      (error) => {
        if (!live() || control.signal.aborted) return;
        const message = error.code ? `${error.status} ${error.code}: ${error.message}` : String(error);
        log('error', message);
        setState('error', message);
        setStream('closed');
      },
    );
  }

  /** Stops watching: paypush.js closes whatever it has open. */
  function stop(s) {
    if (s.control) s.control.abort();
    s.control = null;
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
    session = { order, transport, control: null, closed: false };
    el.log.replaceChildren();
    el.answer.hidden = true;
    el.form.reset();
    el.time.hidden = true;
    step();
    showOrder(order);
    showTransport(transport);
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
    showTransport(transport);
    el.time.hidden = true;
    log('transport', 'now watching through ' + TRANSPORT_NAMES[transport]);
    setState('connecting');
    setStream('connecting');
    connect(s);
  }

  /** `?transport=sse|poll|ws`, else EventSource (paypush.js falls back to long-poll where it is missing). */
  function initialTransport() {
    const asked = params.get('transport');
    return Object.prototype.hasOwnProperty.call(TRANSPORT_NAMES, asked) ? asked : 'sse';
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
}
