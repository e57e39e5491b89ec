// Nothing left behind: a Node process whose only work is one waitForPayment
// exits by itself once the promise settles (no socket, timer or listener
// keeps its event loop alive), whichever transport brought the outcome, and
// after an abort.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freshId, startPaypush, until } from './helpers.js';

/** How long the child may take to exit once it printed its result. */
const EXIT_WITHIN_MS = 2000;

const CHILD = `
import { waitForPayment } from ${JSON.stringify(fileURLToPath(new URL('../paypush.js', import.meta.url)))};
import { installEventSource } from ${JSON.stringify(fileURLToPath(new URL('./helpers.js', import.meta.url)))};
installEventSource();
const [base, id, transport, abortAfterWaiting] = process.argv.slice(1);
const control = new AbortController();
waitForPayment(id, {
  base, transports: [transport], signal: control.signal,
  onState(state) {
    if (state !== 'waiting') return;
    console.log('waiting');
    if (abortAfterWaiting === 'abort') control.abort();
  },
}).then((o) => console.log('outcome ' + o.status), (e) => console.log('rejected ' + e.name));
`;

let paypush;
before(async () => {
  paypush = await startPaypush(['--keep-alive', '1s']);
});
after(() => paypush.stop());

/** Runs the child; pays when it waits (unless it aborts); returns its last line and how long it took to exit after it. */
async function runChild(transport, abort) {
  const id = freshId();
  const child = spawn(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', CHILD, paypush.base, id, transport, abort ? 'abort' : ''], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  let lastAt = 0;
  child.stdout.on('data', (chunk) => {
    out += chunk;
    lastAt = Date.now();
  });
  const exited = new Promise((r) => child.once('exit', () => r(Date.now())));
  await until('the child waits', () => out.includes('waiting'));
  if (!abort) await paypush.callback(id);
  await until('the result', () => /outcome|rejected/.test(out));
  const timer = setTimeout(() => child.kill('SIGKILL'), EXIT_WITHIN_MS + 3000);
  const exitAt = await exited;
  clearTimeout(timer);
  return { result: out.trim().split('\n').at(-1), exitAfter: exitAt - lastAt };
}

for (const transport of ['sse', 'ws', 'poll']) {
  test(`${transport}: the process exits by itself once the outcome came`, async () => {
    const { result, exitAfter } = await runChild(transport, false);
    assert.equal(result, 'outcome SUCCESS');
    assert.ok(exitAfter < EXIT_WITHIN_MS, `exited ${exitAfter} ms after the outcome`);
  });

  test(`${transport}: the process exits by itself once aborted`, async () => {
    const { result, exitAfter } = await runChild(transport, true);
    assert.equal(result, 'rejected AbortError');
    assert.ok(exitAfter < EXIT_WITHIN_MS, `exited ${exitAfter} ms after the abort`);
    await until('no waiter left', async () => (await paypush.metric('paypush_streams_open')) === 0);
  });
}
