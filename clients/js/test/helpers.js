// Test helpers: a real paypush (the built binary, on a free loopback port,
// with a temp data folder of its own), a real redis-server for Redis mode,
// and the stand-ins the issue allows: small HTTP servers in front of paypush
// that buffer, cut, refuse or answer 503/429 the way proxies do.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { connect as netConnect, createServer as netServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EventSource } from 'eventsource';

const here = dirname(fileURLToPath(import.meta.url));
/** The paypush binary under test: PAYPUSH_BIN, else the debug build. */
export const PAYPUSH_BIN = process.env.PAYPUSH_BIN || resolve(here, '../../../target/debug/paypush');
/** How long a test waits for something that should happen. */
export const PATIENCE_MS = 15000;

/** Node 20 has no EventSource: the npm package's stands in for the browser's. */
export function installEventSource() {
  globalThis.EventSource = EventSource;
}

let nextId = Date.now() % 1e9;
/** A payRecordId no other test uses. */
export function freshId() {
  nextId += 1;
  return String(nextId);
}

/** Resolves once `ready()` is true, polling; rejects after PATIENCE_MS. */
export async function until(what, ready) {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const value = await ready();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('waited too long for ' + what);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free loopback port (free a moment ago). */
export async function freePort() {
  const server = netServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** Never leaves a server behind, even when the test process ends early. */
function killOnExit(child) {
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.off('exit', kill));
}

/** A redis-server of the test's own, no persistence, on a free port, in a temp folder. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'paypush-js-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    cwd: dir,
    stdio: 'ignore',
  });
  killOnExit(child);
  await until('redis-server', () => new Promise((ok) => {
    const socket = netConnect(port, '127.0.0.1', () => {
      socket.end();
      ok(true);
    });
    socket.on('error', () => ok(false));
  }));
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await new Promise((r) => {
        child.once('exit', r);
        child.kill('SIGTERM');
      });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Starts paypush with `flags` (plus a temp `--data-dir` unless Redis mode)
 * on a free port; returns its base URL and helpers.
 */
export async function startPaypush(flags = [], { redis, env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'paypush-js-test-'));
  const store = redis ? ['--redis-url', redis.url] : ['--data-dir', join(dir, 'data')];
  const child = spawn(PAYPUSH_BIN, ['--bind', '127.0.0.1:0', ...store, ...flags], {
    cwd: dir,
    env: { ...process.env, RUST_LOG: 'warn,paypush=info', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  killOnExit(child);
  let log = '';
  const address = await new Promise((ok, fail) => {
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const found = /listening on (http:\/\/[0-9.:]+)/.exec(log);
      if (found) ok(found[1]);
    });
    child.once('exit', (code) => fail(new Error(`paypush exited (${code}): ${log}`)));
  });
  const server = {
    base: address,
    async callback(id, status = 'SUCCESS') {
      const res = await fetch(`${address}/pay-callback?payRecordId=${id}&status=${status}`);
      if (res.status !== 200) throw new Error(`callback answered ${res.status}: ${await res.text()}`);
      return res.json();
    },
    /** The value of a metric line (name with labels), 0 when absent. */
    async metric(name) {
      const text = await (await fetch(address + '/metrics')).text();
      const line = text.split('\n').find((l) => l.startsWith(name + ' '));
      return line ? Number(line.split(' ')[1]) : 0;
    },
    /** The subscribe token the binary itself computes. */
    token(secret, id) {
      return execFileSync(PAYPUSH_BIN, ['token', '--secret', secret, '--pay-record-id', id]).toString().trim();
    },
    async stop() {
      if (child.exitCode === null) {
        await new Promise((r) => {
          child.once('exit', r);
          child.kill('SIGTERM');
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

/**
 * A stand-in in front of `target` (a base URL). `handle(req, res, forward)`
 * decides per request: answer itself, or call `forward(req, res, options)`.
 * WebSocket upgrades are piped through when `upgrade(req, socket)` returns
 * true, piped and cut after the first chunk for 'cut', else left to it.
 * Counts requests by path in `hits`.
 */
export async function startStandIn(target, handle, { upgrade = () => true } = {}) {
  const upstream = new URL(target);
  const hits = {};
  const sockets = new Set();
  const count = (req) => {
    const path = new URL(req.url, 'http://x').pathname;
    hits[path] = (hits[path] || 0) + 1;
    (hits.times ||= []).push([path, Date.now()]);
  };
  const forward = (req, res, { buffer = false, cut = false } = {}) => {
    const out = httpRequest(
      { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        if (cut) {
          // Everything up to the first PENDING through, then the connection closes.
          res.writeHead(answer.statusCode, answer.headers);
          cutAfterPending(answer, res, res.socket);
          return;
        }
        if (!buffer) {
          res.writeHead(answer.statusCode, answer.headers);
          answer.pipe(res);
          return;
        }
        // A buffering proxy: nothing reaches the client before the end.
        const chunks = [];
        answer.on('data', (c) => chunks.push(c));
        answer.on('end', () => {
          const headers = { ...answer.headers };
          delete headers['transfer-encoding'];
          res.writeHead(answer.statusCode, headers);
          res.end(Buffer.concat(chunks));
        });
      },
    );
    out.on('error', () => res.socket && res.socket.destroy());
    res.on('close', () => out.destroy());
    req.pipe(out);
  };
  const server = createServer((req, res) => {
    count(req);
    handle(req, res, forward);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req, socket, head) => {
    count(req);
    sockets.add(socket);
    const how = upgrade(req, socket);
    if (!how) return;
    const out = netConnect(upstream.port, upstream.hostname, () => {
      let head0 = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      out.write(head0 + '\r\n');
      out.write(head);
      if (how === 'cut') {
        cutAfterPending(out, socket, socket);
      } else {
        out.pipe(socket);
      }
      socket.pipe(out);
    });
    out.on('error', () => socket.destroy());
    socket.on('error', () => out.destroy());
    socket.on('close', () => out.destroy());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    hits,
    stop: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.close(r);
    }),
  };
}

/** A recorder for onState and onEvent, with waits on what it saw. */
export function recorder() {
  const states = [];
  const events = [];
  return {
    states,
    events,
    onState: (state, transport) => states.push(`${state}:${transport}`),
    onEvent: (kind, text) => events.push([kind, text]),
    count: (kind) => events.filter(([k]) => k === kind).length,
    waiting: (n = 1) => until(`${n} PENDING`, () => events.filter(([k]) => k === 'pending').length >= n),
  };
}

/** Copies `from` to `to` until a chunk holds PENDING, then closes both. */
function cutAfterPending(from, to, socket) {
  from.on('data', (chunk) => {
    const last = chunk.includes('PENDING');
    to.write(chunk, () => {
      if (last) socket.destroy();
    });
    if (last) from.destroy();
  });
}

/** Answers an HTTP request or a raw upgrade socket with `status` and a JSON error. */
export function refuse(target, status, code, headers = {}) {
  const body = JSON.stringify({ error: code, message: 'refused by the stand-in' });
  const all = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers };
  if (typeof target.writeHead === 'function') {
    target.writeHead(status, all);
    target.end(body);
    return;
  }
  let head = `HTTP/1.1 ${status} Refused\r\nconnection: close\r\n`;
  for (const [k, v] of Object.entries(all)) head += `${k}: ${v}\r\n`;
  target.end(head + '\r\n' + body);
}
