// Types of paypush-client: paypush.js (browsers, Node) and miniprogram.js
// (WeChat and Alipay mini-programs).

/** A transport: Server-Sent Events on /push, a WebSocket on /ws, long-poll on /status. */
export type Transport = 'sse' | 'ws' | 'poll';

/**
 * What the wait is doing: opening its first connection, registered and
 * waiting, opening one again (after the server's timeout, a drop or a
 * back-off), or giving up a transport for the next one.
 */
export type WaitState = 'connecting' | 'waiting' | 'reconnecting' | 'fallback';

/** A payment's outcome, exactly as paypush sends it. */
export interface Outcome {
  /** The payment's id, a string of digits (never a number: ids pass 2^53). */
  payRecordId: string;
  status: 'SUCCESS' | 'FAILED' | 'CLOSED';
  /** 支付成功, 支付失败 or 订单已关闭. */
  message: string;
  /** RFC 3339 UTC: when the first callback was accepted. */
  completedAt: string;
}

/** A refusal that retrying cannot fix (400, 403, 404), or no transport at all. */
export interface PaypushError extends Error {
  name: 'PaypushError';
  /** The API's error code (`invalid_pay_record_id`, `invalid_token`, ...), or `no_transport`. */
  code: string;
  /** The HTTP status; 0 for `no_transport`. */
  status: number;
}

/** A GET as the library makes it: what `runtime.get` returns. */
export interface GetRequest {
  done: Promise<{ status: number; text: string; retryAfter?: string | null }>;
  cancel(): void;
}

export interface WaitOptions {
  /** paypush's origin, e.g. `https://pay.example.com`; `''` (default) for the page's own. */
  base?: string;
  /** The subscribe token, when paypush runs with a subscribe secret. */
  token?: string;
  /** Tried in this order; default `['sse', 'ws', 'poll']`. */
  transports?: Transport[];
  /** Aborting it rejects the wait with `signal.reason` and closes everything. */
  signal?: AbortSignal;
  /** Called on every change of state, with the transport now in use. */
  onState?(state: WaitState, transport: Transport): void;
  /**
   * Called for every event on the wire, for logs and debugging: `kind` is
   * `connect`, `open`, `pending`, `timeout`, `message`, `close`, `error`,
   * `retry` or `fallback`; `eventId` is the SSE event id where there is one.
   */
  onEvent?(kind: string, text: string, eventId?: string): void;
  /** ms a connection may take to bring its first PENDING before the next transport is tried; default 5000. */
  connectTimeout?: number;
  /** ms of the first back-off (doubling, with jitter); default 1000. */
  retryDelay?: number;
  /** The longest back-off in ms; default 30000. */
  maxRetryDelay?: number;
  /** Replaces the runtime's EventSource, WebSocket or GET (e.g. a polyfill). */
  runtime?: {
    EventSource?: unknown;
    WebSocket?: unknown;
    get?(url: string, options: { timeout?: number; probe?: boolean }): GetRequest;
  };
}

/**
 * Waits for the payment's outcome. Resolves once, with the outcome, whichever
 * transport brought it; rejects with a {@link PaypushError} on a refusal that
 * retrying cannot fix, or with `signal.reason` when aborted. Leaves no
 * connection, timer or listener behind.
 */
export function waitForPayment(payRecordId: string | number, options?: WaitOptions): Promise<Outcome>;

/** miniprogram.js: the same, over a mini-program platform's request and connectSocket. */
export interface MiniProgramOptions extends Omit<WaitOptions, 'runtime'> {
  /** WeChat's `wx` or Alipay's `my`. */
  platform: {
    request(options: object): { abort?(): void };
    connectSocket?(options: object): object;
  };
  /** Required: a mini-program has no origin of its own. */
  base: string;
}
