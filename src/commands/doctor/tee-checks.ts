import type { Config } from '../../config/schema.js';
import type { ReadinessReport } from '../../obs/readiness.js';
import { newNonce, reportDataOf, type AttestationReport } from '../../tee/attestation.js';
import { reportDataOfTdxQuote } from '../../tee/configfs-tsm.js';
import { TeeError } from '../../tee/key-provider.js';
import { devKeyExists, openDaemonTeeKey } from '../register.js';
import { describeError, fail, pass, warn, type Check } from './check.js';

/** The TEE mode and key this config names, and the running daemon: it answers, and attests its signer. */

const TEE_DOCS = 'README "Running in a TEE"';

export function teeChecks(): Check[] {
  return [
    {
      id: 'tee-mode',
      group: 'tee',
      title: 'TEE mode',
      hint: `set tee.mode to dstack or tdx and run pixeld inside the TEE (${TEE_DOCS})`,
      async run(state) {
        const config = state.config!;
        if (config.tee.mode !== 'dev') return pass(`tee.mode ${config.tee.mode}`);
        if (billsOnChain(config)) {
          return fail(
            'tee.mode dev with chain.* configured: the key is a plain file and nothing is attested, but a registered service must be attested',
            this.hint,
          );
        }
        return warn('tee.mode dev: the key is a plain file and nothing is attested (development only)', this.hint);
      },
    },
    {
      id: 'tee-key',
      group: 'tee',
      title: 'TEE key',
      // The dev key, and dstack's settlement journal, live in the data dir.
      needs: ['data-dir'],
      hint: `check tee.dstack.endpoint: the guest agent's socket, /var/run/dstack.sock mounted into the container (${TEE_DOCS})`,
      async run(state) {
        const config = state.config!;
        if (config.tee.mode === 'tdx') {
          return pass(`tee.mode tdx: the key lives in the daemon's memory, attested by the running daemon (below)`);
        }
        if (config.tee.mode === 'dev' && !devKeyExists(config)) {
          return warn(`no dev key in ${config.dataDir} yet`, 'start the daemon once (npx pixeld serve): it makes the key');
        }
        try {
          state.localKey = await openDaemonTeeKey(config, state.env);
        } catch (err) {
          if (!(err instanceof TeeError)) throw err;
          const hint =
            config.tee.mode === 'dev'
              ? 'set tee.mode to dstack or tdx; tee.allowDevInProduction only for a test deployment'
              : this.hint;
          return fail(err.message, hint);
        }
        return pass(`${state.localKey.address} (${state.localKey.mode}, key from ${state.localKey.keySource})`);
      },
    },
    {
      id: 'daemon',
      group: 'daemon',
      title: 'daemon answers',
      hint: 'start the daemon (npx pixeld serve), or pass --url <the address it listens on>',
      async run(state, signal) {
        const url = state.daemonUrl!;
        let ready: ReadinessReport;
        try {
          const health = await fetch(`${url}/healthz`, { signal });
          if (health.status !== 200) return fail(`${url}/healthz answered ${health.status}`, this.hint);
          ready = (await (await fetch(`${url}/readyz`, { signal })).json()) as ReadinessReport;
        } catch (err) {
          return fail(`${url}: ${describeError(err)}`, this.hint);
        }
        if (!ready.ready) {
          const failing = [
            ...(ready.store === 'ok' ? [] : [`store ${ready.store}`]),
            ...Object.entries(ready.backends ?? {}).filter(([, s]) => s !== 'ok').map(([id, s]) => `backend ${id} ${s}`),
            ...Object.entries(ready.prices?.models ?? {}).filter(([, m]) => !m.billable).map(([id, m]) => `model ${id} ${m.status}`),
          ];
          return warn(`${url} is up but not ready: ${failing.join('; ')}`, `see ${url}/readyz; the checks here name the part to fix`);
        }
        return pass(`${url} is up and ready`);
      },
    },
    {
      id: 'attestation',
      group: 'daemon',
      title: 'attestation',
      needs: ['daemon'],
      hint: `the daemon could not attest its key: see its log and ${TEE_DOCS}`,
      async run(state, signal) {
        const config = state.config!;
        const url = state.daemonUrl!;
        const nonce = newNonce();
        const res = await fetch(`${url}/v1/attestation/report?nonce=${nonce}`, { signal });
        const body = (await res.json().catch(() => undefined)) as (AttestationReport & { error?: { message?: string } }) | undefined;
        if (res.status !== 200 || !body) {
          return fail(`GET /v1/attestation/report: ${res.status} ${body?.error?.message ?? ''}`.trim(), this.hint);
        }
        const mismatch = sameDaemonHint(url);
        const daemonMode = body.insecure || body.tee === 'none' ? 'dev' : body.tee;
        if (daemonMode !== config.tee.mode) {
          return fail(`the daemon at ${url} runs tee mode ${daemonMode}, this config says ${config.tee.mode}`, mismatch);
        }
        const expected = reportDataOf(body.binding, Buffer.from(nonce, 'hex'));
        if (body.request_nonce !== nonce || body.report_data.toLowerCase() !== expected.toString('hex')) {
          return fail('the report does not answer our nonce with sha256(binding) ‖ nonce: a stale or altered report', this.hint);
        }
        if (body.binding.signing_address.toLowerCase() !== body.signing_address.toLowerCase()) {
          return fail(`the report's binding names signer ${body.binding.signing_address}, the report ${body.signing_address}`, this.hint);
        }
        if (state.localKey && state.localKey.address.toLowerCase() !== body.signing_address.toLowerCase()) {
          return fail(`the daemon at ${url} signs with ${body.signing_address}, this config's key is ${state.localKey.address}`, mismatch);
        }
        if (daemonMode !== 'dev') {
          if (!body.intel_quote) return fail(`tee ${body.tee} but the report carries no quote`, this.hint);
          // Read from the quote's layout, not verified: Intel's signature needs collateral from the network
          // (pixeld verify fetches it). What matters here is that the TEE quoted what the daemon claims.
          const quoted = reportDataOfTdxQuote(Buffer.from(body.intel_quote, 'hex'));
          if (!quoted) return fail('the quote is not a TDX quote (version 4 or 5, TEE type 0x81)', this.hint);
          if (!quoted.equals(expected)) return fail("the quote's report_data is not sha256(binding) ‖ our nonce", this.hint);
        }
        // Only a signer the daemon proved is compared with the chain's.
        state.daemonSigner = body.signing_address;
        return daemonMode === 'dev'
          ? pass(`signer ${body.signing_address} (dev mode: no quote)`)
          : pass(`quote from ${body.quote_provider} binds signer ${body.signing_address} to a fresh nonce`);
      },
    },
  ];
}

/** A daemon that bills 0G users, or is meant to be registered: its chain settings are set. */
export function billsOnChain(config: Readonly<Config>): boolean {
  return config.chain.servingAddress !== undefined || config.auth.mode.includes('0g');
}

function sameDaemonHint(url: string): string {
  return `--url ${url} and --config must name the same daemon: pass the daemon's own config, or --url of the daemon this config runs`;
}
