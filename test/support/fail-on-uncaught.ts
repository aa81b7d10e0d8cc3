import { afterAll, afterEach } from 'vitest';

/**
 * An exception thrown from an event handler of an in-process daemon (a stream's `data` listener, a timer)
 * would kill `pixeld serve`. In a test worker vitest catches it, prints it under "Unhandled Errors" and
 * fails the run, but every test still reads as passed and the summary line CI reads says "0 failed".
 * So each one fails the test it happened in (or, when it came between two tests, the next one).
 */

const escaped: unknown[] = [];
const record = (err: unknown): void => {
  escaped.push(err);
};
process.on('uncaughtException', record);
process.on('unhandledRejection', record);

function throwIfEscaped(): void {
  if (escaped.length === 0) return;
  const errors = escaped.splice(0);
  const first = errors[0] instanceof Error ? errors[0].message : String(errors[0]);
  // The first one is also the cause, whose stack names the handler that threw.
  throw new AggregateError(errors, `${errors.length} uncaught exception(s) or unhandled rejection(s), the first: ${first}`, {
    cause: errors[0],
  });
}

afterEach(throwIfEscaped);
afterAll(() => {
  process.off('uncaughtException', record);
  process.off('unhandledRejection', record);
  throwIfEscaped();
});
