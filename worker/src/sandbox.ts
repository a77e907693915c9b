/* The Durable Object class of the sandboxes: the SDK's Sandbox, which starts the container
 * (wrangler.jsonc's "containers" entry for this class) and forwards requests to it.
 *
 * One addition: with sbxd in the image, the container starts with the settings its start-sbxd
 * reads (containerEnv: sbxd's port and token, the sandbox's id, the public base of preview
 * URLs). The environment at start is the only channel from a deployment into a container, and
 * the SDK gives it to every container this object starts. The sandbox's id is the name its
 * Durable Object was made from (getSandbox: idFromName of the lower-cased id).
 *
 * The token in there is sbxd's (SBXD_TOKEN), never the clients' (SBXFS_TOKEN): code in the
 * sandbox can read it in container mode (docs/security.md, "Container mode"), and it opens
 * nothing but that same container's sbxd. */
import { Sandbox as SdkSandbox } from "@cloudflare/sandbox";
import { containerEnv, type Env } from "./config";

export class Sandbox extends SdkSandbox<Env> {
	constructor(ctx: ConstructorParameters<typeof SdkSandbox>[0], env: Env) {
		super(ctx, env);
		this.envVars = { ...this.envVars, ...containerEnv(env, ctx.id.name) };
	}
}
