/**
 * A client for `text/event-stream` answers, parsing as the HTML standard's "interpreting an event stream"
 * says: lines end in CRLF, LF or CR; a line starting with ':' is a comment; `field: value` loses one space
 * after the colon; `data` lines join with LF; `id` (without NUL) sets the last event id, which persists; an
 * empty line dispatches the event unless it has no data; the type defaults to `message`.
 */

export interface SseEvent {
  /** `event:`, or `message`. */
  event: string;
  data: string;
  /** The `id:` line of this very event, if it had one. */
  id: string | undefined;
  /** The stream's last event id when this event was dispatched (what EventSource reconnects with). */
  lastEventId: string;
}

export class SseParser {
  private buffer = '';
  private pendingCr = false;
  private data: string[] = [];
  private type = '';
  private ownId: string | undefined;
  private lastEventId = '';
  readonly comments: string[] = [];

  /** Takes the next decoded text; returns the events it completed. */
  feed(text: string): SseEvent[] {
    const events: SseEvent[] = [];
    for (const ch of text) {
      if (this.pendingCr) {
        this.pendingCr = false;
        if (ch === '\n') continue;
      }
      if (ch === '\r' || ch === '\n') {
        this.pendingCr = ch === '\r';
        const line = this.buffer;
        this.buffer = '';
        const event = this.line(line);
        if (event) events.push(event);
      } else {
        this.buffer += ch;
      }
    }
    return events;
  }

  private line(line: string): SseEvent | undefined {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) {
      this.comments.push(line.slice(1).trimStart());
      return undefined;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.type = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) {
      this.lastEventId = value;
      this.ownId = value;
    }
    return undefined;
  }

  private dispatch(): SseEvent | undefined {
    const event =
      this.data.length === 0 ? undefined : { event: this.type || 'message', data: this.data.join('\n'), id: this.ownId, lastEventId: this.lastEventId };
    this.data = [];
    this.type = '';
    this.ownId = undefined;
    return event;
  }
}

export interface SseConnection {
  status: number;
  headers: Headers;
  /** The body as JSON when the answer is not an event stream (an error). */
  errorBody(): Promise<Record<string, any>>;
  /** The next event, or undefined once the stream has ended. Rejects after `timeoutMs` without one. */
  next(timeoutMs?: number): Promise<SseEvent | undefined>;
  /** Every event until the stream ends. */
  rest(timeoutMs?: number): Promise<SseEvent[]>;
  /** Comment lines so far (heartbeats). */
  comments: string[];
  /** Goes away mid-stream, as a closed tab does. */
  close(): void;
}

export async function openSse(url: string, headers: Record<string, string> = {}): Promise<SseConnection> {
  const abort = new AbortController();
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal });
  const parser = new SseParser();
  const queued: SseEvent[] = [];
  // A 204 (an ended job with nothing left to send) has no body at all.
  const reader = res.body?.getReader();
  const decoder = new TextDecoder();
  let ended = reader === undefined;

  const next = async (timeoutMs = 10_000): Promise<SseEvent | undefined> => {
    const deadline = Date.now() + timeoutMs;
    while (queued.length === 0 && !ended) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`no event within ${timeoutMs} ms`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), remaining);
      });
      const read = await Promise.race([reader!.read(), timeout]);
      clearTimeout(timer);
      if (read === 'timeout') throw new Error(`no event within ${timeoutMs} ms`);
      if (read.done) ended = true;
      else queued.push(...parser.feed(decoder.decode(read.value, { stream: true })));
    }
    return queued.shift();
  };

  return {
    status: res.status,
    headers: res.headers,
    async errorBody() {
      let text = '';
      if (reader === undefined) throw new Error(`HTTP ${res.status} has no body`);
      for (let read = await reader.read(); !read.done; read = await reader.read()) text += decoder.decode(read.value, { stream: true });
      return JSON.parse(text + decoder.decode()) as Record<string, any>;
    },
    next,
    async rest(timeoutMs = 10_000) {
      const events: SseEvent[] = [];
      for (let e = await next(timeoutMs); e !== undefined; e = await next(timeoutMs)) events.push(e);
      return events;
    },
    comments: parser.comments,
    close() {
      abort.abort();
    },
  };
}
