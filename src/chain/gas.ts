/**
 * The gas limit to send with an estimate: +25 % and 10,000. An estimate is exact for the state and block
 * it ran on; the block that mines the transaction can differ — InferenceServing stores block.timestamp,
 * and writing a new value costs more than rewriting the same one — so a limit equal to the estimate can
 * run out of gas (anvil showed it: an update estimated in the second of the last one reverted).
 */
export function gasLimitFor(estimate: bigint): bigint {
  return (estimate * 125n) / 100n + 10_000n;
}
