import sharp from 'sharp';
import { BackendError } from '../../src/backends/errors.js';
import type { BackendCallOptions, BackendCallResult, ImageBackend } from '../../src/backends/types.js';

export interface PendingCall {
  options: BackendCallOptions;
  /** Answer with `count` solid PNGs of the requested size (default: as many as asked). */
  succeed(count?: number): Promise<void>;
  /** Answer with these exact bytes. */
  respond(images: Uint8Array[]): void;
  fail(error: unknown): void;
}

/**
 * A backend the test drives by hand: each generate() call waits until the test answers it, so queue,
 * cancel and deadline behaviour can be checked without timing guesses. Aborts reject at once with the
 * signal's reason, as real adapters must.
 */
export class ControlledBackend implements ImageBackend {
  readonly type = 'controlled';
  readonly calls: PendingCall[] = [];
  readonly aborted: string[] = [];
  private waiters: Array<(call: PendingCall) => void> = [];

  constructor(
    readonly id: string,
    readonly maxImagesPerCall = 4,
    readonly rerunInterruptedJobs = true,
  ) {}

  generate(options: BackendCallOptions): Promise<BackendCallResult> {
    return new Promise<BackendCallResult>((resolve, reject) => {
      const onAbort = () => {
        this.aborted.push(options.prompt);
        reject(options.signal.reason);
      };
      if (options.signal.aborted) return onAbort();
      options.signal.addEventListener('abort', onAbort, { once: true });
      const done = () => options.signal.removeEventListener('abort', onAbort);
      const call: PendingCall = {
        options,
        async succeed(count = options.n) {
          const [w, h] = options.size.split('x').map(Number) as [number, number];
          const images: Uint8Array[] = [];
          for (let i = 0; i < count; i += 1) {
            images.push(
              await sharp({ create: { width: w, height: h, channels: 3, background: { r: (options.seed + i) % 256, g: 80, b: 160 } } })
                .png()
                .toBuffer(),
            );
          }
          done();
          resolve({ images, warnings: [], response: { timestampMs: Date.now(), modelId: options.model } });
        },
        respond(images) {
          done();
          resolve({ images, warnings: [], response: { timestampMs: Date.now(), modelId: options.model } });
        },
        fail(error) {
          done();
          reject(error);
        },
      };
      this.calls.push(call);
      const waiter = this.waiters.shift();
      if (waiter) waiter(call);
    });
  }

  /** The next call, waiting for it to arrive if needed. */
  async nextCall(timeoutMs = 5_000): Promise<PendingCall> {
    const unanswered = this.calls.find((c) => !this.taken.has(c));
    if (unanswered) {
      this.taken.add(unanswered);
      return unanswered;
    }
    return new Promise<PendingCall>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no backend call arrived')), timeoutMs);
      this.waiters.push((call) => {
        clearTimeout(timer);
        this.taken.add(call);
        resolve(call);
      });
    });
  }

  private taken = new Set<PendingCall>();

  async checkHealth(): Promise<void> {}

  static unavailable(id: string, message = 'connection refused'): BackendError {
    return new BackendError(id, 'unavailable', message);
  }
}
