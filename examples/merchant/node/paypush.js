#!/usr/bin/env node
// paypush from a merchant's Node.js backend (built-ins only, Node 18+).
//
// Signs a callback exactly as `paypush sign` does (contract v2), sends it, and
// mints the subscribe token a checkout page needs for /push. Copy
// `signature`, `callback` and `subscribeToken` into your service.
//
//   export PAYPUSH_URL=http://127.0.0.1:8080 PAYPUSH_CALLBACK_SECRET=... PAYPUSH_SUBSCRIBE_SECRET=...
//   node paypush.js callback-get  123 SUCCESS   # signed GET /pay-callback
//   node paypush.js callback-form 124 FAILED    # signed form POST /pay-callback
//   node paypush.js token 123                   # the token for /push?payRecordId=123&token=...
//   node paypush.js sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE
'use strict';

const crypto = require('node:crypto');

const FORM = 'application/x-www-form-urlencoded';

const hmacHex = (secret, message) =>
  crypto.createHmac('sha256', secret).update(message, 'utf8').digest('hex');

/** The Content-Type's type/subtype in lower case without parameters; '' for none. */
const mediaType = (contentType) => contentType.split(';')[0].trim().toLowerCase();

/** The Paypush-Signature of a callback (contract v2: the media type is signed). */
function signature(secret, timestamp, nonce, method, pathAndQuery, contentType, body) {
  const message =
    [timestamp, nonce, method, pathAndQuery, mediaType(contentType), body].join('\n') + '\n';
  return hmacHex(secret, message);
}

/** Sends a signed callback; resolves to { status, body }. */
async function callback(baseUrl, secret, method, pathAndQuery, contentType = '', body = '') {
  const timestamp = String(Math.floor(Date.now() / 1000));
  const nonce = crypto.randomBytes(16).toString('hex');
  const headers = {
    'Paypush-Timestamp': timestamp,
    'Paypush-Nonce': nonce,
    'Paypush-Signature': signature(secret, timestamp, nonce, method, pathAndQuery, contentType, body),
  };
  if (contentType) headers['Content-Type'] = contentType;
  const answer = await fetch(baseUrl + pathAndQuery, {
    method,
    headers,
    body: method === 'POST' ? body : undefined,
  });
  return { status: answer.status, body: await answer.text() };
}

/** The token a checkout page passes to /push: hex HMAC-SHA256(secret, "push:" + id). */
const subscribeToken = (secret, payRecordId) => hmacHex(secret, `push:${payRecordId}`);

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

async function main([command, ...args]) {
  const baseUrl = process.env.PAYPUSH_URL || 'http://127.0.0.1:8080';
  switch (command) {
    case 'callback-get':
    case 'callback-form': {
      const fields = new URLSearchParams({ payRecordId: args[0], status: args[1] }).toString();
      const answer =
        command === 'callback-get'
          ? await callback(baseUrl, env('PAYPUSH_CALLBACK_SECRET'), 'GET', `/pay-callback?${fields}`)
          : await callback(baseUrl, env('PAYPUSH_CALLBACK_SECRET'), 'POST', '/pay-callback', FORM, fields);
      console.log(`${answer.status} ${answer.body}`);
      return 0;
    }
    case 'token':
      console.log(subscribeToken(env('PAYPUSH_SUBSCRIBE_SECRET'), args[0]));
      return 0;
    case 'sign': {
      const [method, path, contentType, body, timestamp, nonce] = args;
      console.log(signature(env('PAYPUSH_CALLBACK_SECRET'), timestamp, nonce, method, path, contentType, body));
      return 0;
    }
    default:
      console.error('usage: node paypush.js callback-get ID STATUS | callback-form ID STATUS | token ID' +
        ' | sign METHOD PATH_AND_QUERY CONTENT_TYPE BODY TIMESTAMP NONCE');
      return 2;
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
