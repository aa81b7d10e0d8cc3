import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A JSON-RPC proxy in front of a real node (anvil), for outages and crashes at an exact step: every call
 * is forwarded unchanged unless the proxy is cut (connections dropped, nothing forwarded) or a hook for
 * the call's method decides otherwise. Nothing is answered that the node did not answer, or would not
 * have answered a block earlier.
 */

export interface ProxiedCall {
  method: string;
  params: unknown[];
  /** Sends the call to the node now (once) and returns its JSON-RPC response. */
  forward(): Promise<unknown>;
}

/**
 * `answer`: forward if not yet done, then answer; `drop`: close the connection without answering;
 * `{ lagging }`: answer `lagging` as the result instead, as a node behind the others at the same URL
 * would (RPC providers balance calls over nodes that are not all at the same block).
 */
export type HookAction = 'answer' | 'drop' | { lagging: unknown };
export type Hook = (call: ProxiedCall) => Promise<HookAction> | HookAction;

export interface RpcProxy {
  url: string;
  /** Methods of every call received, in order. */
  methods: string[];
  /** Runs `hook` on the next call of `method` (once). */
  once(method: string, hook: Hook): void;
  /** Drops every connection and every call from now on, as a dead node would. */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function startRpcProxy(targetUrl: string): Promise<RpcProxy> {
  const hooks = new Map<string, Hook[]>();
  const sockets = new Set<Socket>();
  const methods: string[] = [];
  let isCut = false;

  const forwardBody = async (body: string): Promise<unknown> => {
    const res = await fetch(targetUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    return res.json();
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    if (isCut) return req.socket.destroy();
    let parsed: { id?: unknown; method?: string; params?: unknown[] } | Array<{ id?: unknown; method?: string; params?: unknown[] }>;
    try {
      parsed = JSON.parse(body) as typeof parsed;
    } catch {
      res.writeHead(400).end();
      return;
    }
    const first = Array.isArray(parsed) ? parsed[0] : parsed;
    const method = first?.method ?? '';
    methods.push(method);
    let response: unknown;
    let forwarded = false;
    const forward = async () => {
      if (!forwarded) {
        forwarded = true;
        response = await forwardBody(body);
      }
      return response;
    };
    const hook = hooks.get(method)?.shift();
    const action = hook ? await hook({ method, params: first?.params ?? [], forward }) : 'answer';
    if (action === 'drop' || isCut) return req.socket.destroy();
    if (typeof action === 'object') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: first?.id, result: action.lagging }));
      return;
    }
    await forward();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(response));
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => req.socket.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    if (isCut) socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    methods,
    once(method, hook) {
      hooks.set(method, [...(hooks.get(method) ?? []), hook]);
    },
    cut() {
      isCut = true;
      for (const socket of sockets) socket.destroy();
    },
    restore() {
      isCut = false;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
