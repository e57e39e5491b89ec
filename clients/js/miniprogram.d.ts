// Types of miniprogram.js: see paypush.d.ts.
import type { MiniProgramOptions, Outcome } from './paypush.js';

export type { MiniProgramOptions, Outcome, PaypushError, Transport, WaitState } from './paypush.js';

/** Waits for the payment's outcome over the platform's connectSocket (/ws) or request (/status). */
export function waitForPayment(payRecordId: string | number, options: MiniProgramOptions): Promise<Outcome>;
