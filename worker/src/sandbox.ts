/* The Durable Object class of the sandboxes: the SDK's Sandbox, which starts the container
 * (wrangler.jsonc's "containers" entry for this class) and forwards requests to it.
 *
 * One addition: sbxd in the image must accept the token the Worker sends it (SBXD_TOKEN), and
 * the only channel from a deployment into a container is its environment at start, so the
 * container starts with SBXD_TOKEN set to that secret. The SDK gives the same variables to the
 * shell sessions of its own control server, which this Worker never opens; sbxd runs
 * sandboxed code with an environment of its own. */
import { Sandbox as SdkSandbox } from "@cloudflare/sandbox";
import type { Env } from "./config";

export class Sandbox extends SdkSandbox<Env> {
	constructor(ctx: ConstructorParameters<typeof SdkSandbox>[0], env: Env) {
		super(ctx, env);
		const token = env.SBXD_TOKEN?.trim();
		if (token)
			this.envVars = { ...this.envVars, SBXD_TOKEN: token };
	}
}
