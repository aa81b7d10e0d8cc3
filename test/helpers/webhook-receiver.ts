import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Webhook } from 'standardwebhooks';
import { TEST_CA, TEST_HOST_ADDRESS } from './remote-image-host.js';

/**
 * A webhook receiver as a router would run one: https on loopback (the test certificate for *.example.test),
 * every delivery verified with the Standard Webhooks library under the secret it is given, and de-duplicated
 * by webhook-id. It can go down (stop listening) and come back on the same port, or answer with another
 * status. Loopback is a private address: the daemon reaches it only through `webhooks.allowPrivate`, which is
 * exactly how a provider lets deliveries reach its own network.
 */

const KEY = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/remote-images/key.pem'), 'utf8');

export interface ReceivedWebhook {
  id: string;
  timestamp: number;
  body: Record<string, any>;
  /** Whether the signature verified under the receiver's secret. */
  verified: boolean;
  path: string;
}

export class WebhookReceiver {
  /** Every request, repeats included, in order. */
  readonly received: ReceivedWebhook[] = [];
  /** The first verified delivery of each webhook-id: what a deduplicating receiver acts on. */
  readonly events = new Map<string, ReceivedWebhook>();
  /** The status answered to the next requests (one per request, the last repeating); 0 never answers. */
  answers: number[] = [204];
  /** Headers sent with a non-2xx answer (e.g. a redirect's Location). */
  answerHeaders: Record<string, string> = {};
  port = 0;
  private server: Server | undefined;

  constructor(public secret: string) {}

  async start(port = this.port): Promise<this> {
    const server = createServer({ key: KEY, cert: TEST_CA }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const payload = Buffer.concat(chunks).toString('utf8');
        let verified = true;
        try {
          new Webhook(this.secret).verify(payload, req.headers as Record<string, string>);
        } catch {
          verified = false;
        }
        const delivery: ReceivedWebhook = {
          id: String(req.headers['webhook-id']),
          timestamp: Number(req.headers['webhook-timestamp']),
          body: JSON.parse(payload) as Record<string, any>,
          verified,
          path: req.url ?? '',
        };
        this.received.push(delivery);
        const status = this.answers.length > 1 ? this.answers.shift()! : this.answers[0]!;
        if (status === 0) return;
        if (status >= 200 && status < 300 && verified && !this.events.has(delivery.id)) this.events.set(delivery.id, delivery);
        res.writeHead(status, status >= 300 ? this.answerHeaders : {}).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(port, TEST_HOST_ADDRESS, resolve));
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
    return this;
  }

  /** Stops listening: attempts meet a refused connection until start() again. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  url(host: string, pathname = '/hooks/pixeld'): string {
    return `https://${host}:${this.port}${pathname}`;
  }
}
