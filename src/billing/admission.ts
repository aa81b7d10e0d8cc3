import type { ServingAccount } from '../chain/get-account.js';
import { PixeldError } from '../errors.js';
import type { Reservation } from '../jobs/store.js';
import type { BillingStore } from './store.js';

/**
 * Decides what a 0G user's job must fit in before it is accepted (billing.md "Receipts"): the on-chain
 * balance less pending refunds, and — the job store checks this in its insert transaction — less
 * unsettled receipts and the reservations of unfinished jobs. A user whose last settlement came back
 * PARTIAL is refused until their balance rises above what it was then.
 */
export class BillingAdmission {
  constructor(private readonly billing: BillingStore) {}

  /** The reservation for this job, or undefined when nothing needs reserving (free model, no 0G account). */
  async reservationFor(owner: string, account: ServingAccount | undefined, pricePerImageWei: bigint): Promise<Reservation | undefined> {
    if (account === undefined || pricePerImageWei === 0n) return undefined;
    const block = await this.billing.getUserBlock(owner);
    if (block) {
      if (account.balance <= block.balanceWei) {
        throw new PixeldError(
          'insufficient_credits',
          `your last settlement came back ${block.shortfallWei} wei short; top up your account with this provider to continue`,
        );
      }
      await this.billing.unblockUser(owner);
    }
    const budget = account.balance - account.pendingRefund;
    return { budgetWei: budget > 0n ? budget : 0n, balanceBlock: account.block };
  }
}
