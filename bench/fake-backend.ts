import { startFakeOpenAIServer } from '../test/fakes/openai-compatible-server.js';

/**
 * The fake OpenAI-compatible backend in a process of its own (`node --import tsx bench/fake-backend.ts`),
 * so its CPU time is not taken from the event loop being measured. Prints `{"url": …}` on its first
 * stdout line and runs until SIGTERM.
 */
const fake = await startFakeOpenAIServer({ flavor: 'openai', noisy: true });
process.stdout.write(`${JSON.stringify({ url: fake.url, origin: fake.origin })}\n`);
// The fake records every request (bodies included); a benchmark sends thousands, so forget them as they come.
setInterval(() => fake.requests.splice(0), 1_000).unref();
process.once('SIGTERM', () => {
  void fake.close().then(() => process.exit(0));
});
