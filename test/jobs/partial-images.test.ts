import { describe, expect, it } from 'vitest';
import { PartialImageHub, type PartialImageSink } from '../../src/jobs/partial-images.js';

function recordingSink(max: number): PartialImageSink & { got: Array<[number, number]> } {
  const got: Array<[number, number]> = [];
  return { max, got, deliver: (image, index) => got.push([image[0]!, index]) };
}

/** Offers one preview at each progress value; the preview's only byte is that value. */
function offerAt(hub: PartialImageHub, jobId: string, progresses: number[]): void {
  let progress = 0;
  const forward = hub.forwarder(jobId, () => progress);
  for (const p of progresses) {
    progress = p;
    forward?.(new Uint8Array([p]));
  }
}

describe('PartialImageHub', () => {
  it('gives a backend call no preview handler for a job nobody streams, or one whose stream ended', () => {
    const hub = new PartialImageHub();
    expect(hub.forwarder('job_a', () => 50)).toBeUndefined();
    hub.attach('job_a', recordingSink(0));
    expect(hub.forwarder('job_a', () => 50)).toBeUndefined();
    hub.attach('job_b', recordingSink(2));
    expect(hub.forwarder('job_b', () => 50)).toBeTypeOf('function');
    hub.detach('job_b');
    expect(hub.forwarder('job_b', () => 50)).toBeUndefined();
  });

  it('spreads previews over the job: preview i once (i + 1) / (max + 1) is done, never more than max', () => {
    const steps = Array.from({ length: 20 }, (_, i) => (i + 1) * 5);
    for (const [max, expected] of [
      [1, [[50, 0]]],
      [
        2,
        [
          [35, 0],
          [70, 1],
        ],
      ],
      [
        3,
        [
          [25, 0],
          [50, 1],
          [75, 2],
        ],
      ],
    ] as const) {
      const hub = new PartialImageHub();
      const sink = recordingSink(max);
      hub.attach('job_x', sink);
      offerAt(hub, 'job_x', steps);
      expect(sink.got, `max ${max}`).toEqual(expected);
    }
  });

  it('counts across the calls of one job, and stops delivering when the stream detaches mid-call', () => {
    const hub = new PartialImageHub();
    const sink = recordingSink(3);
    hub.attach('job_y', sink);
    offerAt(hub, 'job_y', [30]);
    offerAt(hub, 'job_y', [55]);
    let progress = 80;
    const forward = hub.forwarder('job_y', () => progress)!;
    hub.detach('job_y');
    forward(new Uint8Array([progress]));
    progress = 99;
    forward(new Uint8Array([progress]));
    expect(sink.got).toEqual([
      [30, 0],
      [55, 1],
    ]);
  });
});
