import pg from 'pg';
import type { JobSignals } from '../job-signals.js';
import { JOB_EVENTS_CHANNEL } from './pool.js';

/**
 * Every replica's job events, heard here: one connection of its own LISTENs on the store's channel (the
 * PostgreSQL store notifies from inside each transition, see pool.ts) and reports what it hears to this
 * process's JobSignals. A long-poll on one replica so wakes when another completes its job, a runner hears
 * of work queued elsewhere, and a cancel reaches the replica running the job.
 *
 * A lost connection is opened again with a growing pause. Meanwhile nothing is lost for good: waiters
 * re-read the job every second and runners look for work every half second; events only make them faster.
 */

export interface JobNotificationsOptions {
  url: string;
  signals: JobSignals;
  connectTimeoutMs?: number;
  /** The connection failed or dropped (it is opened again). */
  onError?: (err: Error) => void;
  /** First and longest pause before connecting again. @default 250, 10_000 */
  retryFirstMs?: number;
  retryMaxMs?: number;
}

export interface JobNotifications {
  /** Resolves once the first LISTEN is in place (or the first attempt failed and retries are scheduled). */
  ready: Promise<void>;
  close(): Promise<void>;
}

export function listenForJobSignals(options: JobNotificationsOptions): JobNotifications {
  const { signals } = options;
  const retryFirstMs = options.retryFirstMs ?? 250;
  const retryMaxMs = options.retryMaxMs ?? 10_000;
  let client: pg.Client | undefined;
  let closed = false;
  let retryMs = retryFirstMs;
  let retryTimer: NodeJS.Timeout | undefined;

  const deliver = (payload: string | undefined) => {
    const space = payload?.indexOf(' ') ?? -1;
    if (payload === undefined || space < 0) return;
    const id = payload.slice(space + 1);
    switch (payload.slice(0, space)) {
      case 'finished':
        signals.finished(id);
        break;
      case 'cancelled':
        signals.cancelled(id);
        break;
      case 'queued':
        signals.queued(id);
        break;
    }
  };

  const scheduleReconnect = () => {
    if (closed || retryTimer) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void connect();
    }, retryMs);
    retryTimer.unref();
    retryMs = Math.min(retryMs * 2, retryMaxMs);
  };

  const connect = async (): Promise<void> => {
    const c = new pg.Client({
      connectionString: options.url,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 5_000,
      application_name: 'pixeld-listen',
    });
    c.on('notification', (msg) => {
      if (msg.channel === JOB_EVENTS_CHANNEL) deliver(msg.payload);
    });
    c.on('error', (err) => {
      options.onError?.(err);
      if (client === c) client = undefined;
      c.end().catch(() => undefined);
      scheduleReconnect();
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${JOB_EVENTS_CHANNEL}`);
    } catch (err) {
      options.onError?.(err as Error);
      await c.end().catch(() => undefined);
      scheduleReconnect();
      return;
    }
    if (closed) {
      await c.end().catch(() => undefined);
      return;
    }
    client = c;
    retryMs = retryFirstMs;
  };

  return {
    ready: connect(),
    async close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      const c = client;
      client = undefined;
      await c?.end().catch(() => undefined);
    },
  };
}
