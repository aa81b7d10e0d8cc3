'use strict';

/**
 * autocannon's setupRequest for the sync-overhead scenario, as a file: its worker thread require()s it
 * (a function cannot be posted to a worker). Each request asks for the next of SEEDS pictures, so the
 * daemon answers every request with an image it has not just served: more pictures than its base64 cache
 * holds, as many as the fake backend keeps rendered.
 */
const SEEDS = 24;
let next = 0;

module.exports = function nextSeed(request) {
  const body = JSON.parse(request.body);
  body.seed = next % SEEDS;
  next += 1;
  return { ...request, body: JSON.stringify(body) };
};
