/* What a deployment configures: wrangler.jsonc's "vars" and the secrets set with
 * `wrangler secret put`, read once per request into a checked Config. docs/cloudflare.md lists
 * them for users. */
import type { Sandbox as SdkSandbox } from "@cloudflare/sandbox";

/** The SDK's own control server in the container image; proxyToSandbox never forwards to it. */
export const CONTROL_PORT = 3000;

export interface Env {
	/* The Durable Object namespace of the sandboxes. The SDK's proxyToSandbox looks it up under
	 * this very name. */
	Sandbox: DurableObjectNamespace<SdkSandbox>;
	/** Secret: the bearer token clients present (sbxfs's SBXFS_TOKEN). */
	SBXFS_TOKEN?: string;
	/** Var: the port sbxd listens on in the image; unset or empty when the image has no sbxd. */
	SBXD_PORT?: string;
	/** Secret: the bearer token of the image's sbxd (never the clients' token). */
	SBXD_TOKEN?: string;
	/** Var: the host (and port) preview URLs are made under; default: the host a request came to. */
	PREVIEW_HOST?: string;
	/** Var: how long a sandbox's container lives on without requests (the SDK's sleepAfter). */
	SLEEP_AFTER?: string;
}

export interface Config {
	clientToken: string;
	/** Where API requests go in the container: sbxd's port, or the SDK's control server. */
	apiPort: number;
	/** sbxd's port when the image has sbxd, else null (then previews go through the SDK). */
	sbxdPort: number | null;
	sbxdToken: string | null;
	previewHost: string | null;
	sleepAfter: string | null;
}

export class ConfigError extends Error {}

function present(v: string | undefined): string | null {
	return v !== undefined && v.trim() !== "" ? v.trim() : null;
}

/* Throws ConfigError with a message that says what to change, so that a deployment that lacks
 * something answers every request with that message instead of guessing. */
export function readConfig(env: Env): Config {
	const clientToken = present(env.SBXFS_TOKEN);
	if (!clientToken)
		throw new ConfigError("the Worker has no SBXFS_TOKEN secret: set it with " +
			"`npx wrangler secret put SBXFS_TOKEN`");
	let sbxdPort: number | null = null;
	const port = present(env.SBXD_PORT);
	if (port !== null) {
		sbxdPort = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
		if (!(sbxdPort >= 1 && sbxdPort <= 65535) || sbxdPort === CONTROL_PORT)
			throw new ConfigError(`SBXD_PORT is "${port}": it must be sbxd's port in the ` +
				`image, a number from 1 to 65535 other than ${CONTROL_PORT}, or empty`);
	}
	if (sbxdPort !== null && !present(env.SBXD_TOKEN))
		throw new ConfigError("SBXD_PORT is set but the SBXD_TOKEN secret is not: set sbxd's " +
			"token with `npx wrangler secret put SBXD_TOKEN`");
	const previewHost = present(env.PREVIEW_HOST);
	if (previewHost !== null && !/^[a-z0-9.-]+(:\d{1,5})?$/i.test(previewHost))
		throw new ConfigError(`PREVIEW_HOST is "${previewHost}": it must be a host name, ` +
			"with a port or without, such as sbx.example.com");
	return {
		clientToken,
		apiPort: sbxdPort ?? CONTROL_PORT,
		sbxdPort,
		sbxdToken: present(env.SBXD_TOKEN),
		previewHost: previewHost?.toLowerCase() ?? null,
		sleepAfter: present(env.SLEEP_AFTER),
	};
}

/** The environment a sandbox's container starts with: with sbxd, the settings the image's
 * start-sbxd reads (docs/container.md), so that sbxd listens where the Worker sends, takes the
 * Worker's token for it, and makes preview URLs in the Worker's form; without sbxd, nothing. */
export function containerEnv(env: Env, sandboxId: string | undefined): Record<string, string> {
	const port = present(env.SBXD_PORT);
	if (port === null)
		return {};
	const out: Record<string, string> = { SBXD_PORT: port };
	const token = present(env.SBXD_TOKEN);
	if (token !== null)
		out.SBXD_TOKEN = token;
	if (sandboxId)
		out.SBXD_SANDBOX_ID = sandboxId;
	const previewHost = present(env.PREVIEW_HOST);
	if (previewHost !== null)
		out.SBXD_PREVIEW_BASE = `https://${previewHost.toLowerCase()}`;
	return out;
}
