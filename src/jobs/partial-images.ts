/**
 * Partial images travel from the runner to the streaming response that asked for them, inside this
 * process: a sink is attached under the job's id before the job can be claimed, so the job's first backend
 * call already asks its backend for previews. A job that runs on another replica (PostgreSQL, a backend this
 * replica does not run) finds no sink there and streams only its completed image. Partial images are never
 * stored, hashed, signed or billed.
 */

/** Where a streaming response takes the partial images of its job. */
export interface PartialImageSink {
  /** Partial images wanted at most, 1–3 (`partial_images`). */
  readonly max: number;
  /** One preview let through, as the backend rendered it (png or jpeg); `index` counts from 0. */
  deliver(image: Uint8Array, index: number): void;
}

export class PartialImageHub {
  private readonly sinks = new Map<string, { sink: PartialImageSink; sent: number }>();

  attach(jobId: string, sink: PartialImageSink): void {
    if (sink.max < 1) return;
    this.sinks.set(jobId, { sink, sent: 0 });
  }

  detach(jobId: string): void {
    this.sinks.delete(jobId);
  }

  /** The async job's previews for event streams, while it is attached here (it was submitted to this replica). */
  liveOf(jobId: string): LivePartialImages | undefined {
    const sink = this.sinks.get(jobId)?.sink;
    return sink instanceof LivePartialImages ? sink : undefined;
  }

  /**
   * The preview handler for one backend call of this job, or undefined when nobody streams it (the backend
   * then does not ask for previews). Backends send a preview per sampler step or so; they are spread over
   * the job: preview i goes out once the job's progress reaches (i + 1) / (max + 1), never more than `max`.
   * @param progressOf the job's progress now, 0–100
   */
  forwarder(jobId: string, progressOf: () => number): ((image: Uint8Array) => void) | undefined {
    if (!this.sinks.has(jobId)) return undefined;
    return (image) => {
      const entry = this.sinks.get(jobId);
      if (entry === undefined || entry.sent >= entry.sink.max) return;
      if (progressOf() < ((entry.sent + 1) * 100) / (entry.sink.max + 1)) return;
      entry.sink.deliver(image, entry.sent);
      entry.sent += 1;
    };
  }
}

/**
 * An async job's partial images (`partial_images` on an async submit), for the event streams
 * (GET …/events) open on this replica. A stream that opens late gets the previews sent so far, then the
 * rest as they come; at most `max` are ever kept, and none once the job ends (the submit detaches it).
 */
export class LivePartialImages implements PartialImageSink {
  private readonly sent: Array<{ image: Uint8Array; index: number }> = [];
  private readonly listeners = new Set<(image: Uint8Array, index: number) => void>();

  constructor(readonly max: number) {}

  deliver(image: Uint8Array, index: number): void {
    this.sent.push({ image, index });
    for (const listener of this.listeners) listener(image, index);
  }

  /** Returns the function that stops listening. */
  listen(listener: (image: Uint8Array, index: number) => void): () => void {
    for (const { image, index } of this.sent) listener(image, index);
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
