/* The Worker's requests: https://WORKER/sandbox/<id>/<path> reaches sandbox <id>'s container,
 * and preview URLs reach the servers inside it.
 *
 * Each sandbox id is one Durable Object of the SDK's Sandbox class (getSandbox), which starts
 * its container on first use and stops it SLEEP_AFTER (default 10 minutes) after the last
 * request or stream ended: an id that was never used before is simply a new sandbox. Ids are
 * DNS labels and case-insensitive (the SDK's normalizeId), since they also name preview hosts.
 *
 * API requests carry the clients' bearer token (SBXFS_TOKEN), checked before anything else, so
 * that no one without it can even start a container. The request then goes to the container
 * as sent, with three changes: the /sandbox/<id> prefix is taken off the path; every header
 * that carries the clients' token is dropped; and sbxd's own token (SBXD_TOKEN) is added when
 * the image has sbxd. Method, query, body and the other headers (Idempotency-Key, Sbx-Client)
 * pass unchanged, and the answer comes back as the container gave it. Bodies are streams both
 * ways and the Worker never reads one whole (an SSE answer, such as ctx/<id>/out,
 * proc/<id>/follow or the watch stream, reaches the client event by event), except sbxd's
 * small /api/x/ports answers, whose URLs it rewrites (preview.ts).
 *
 * Where in the container: SBXD_PORT when the image runs sbxd, else the SDK's control server
 * on port 3000 (then sbxfs finds no extensions and runs in fallback mode). The request goes
 * with the SDK's containerFetch(request, port), called on the Durable Object's stub (Cloudflare's
 * name for the Worker's handle on a Durable Object, a DurableObjectStub), which takes any port;
 * the handle's fetch() would send every plain HTTP request to port 3000.
 * containerFetch cannot carry a WebSocket across that call, so a WebSocket upgrade to a
 * preview URL goes through the SDK's wsConnect instead.
 *
 * Hang-ups: the runtime notices a client that went away only when it next writes to it, and
 * then cancels the stream back to the container. sbxd's keepalives (every 15 s) bound how long
 * an idle stream outlives its client; a plain request whose client left runs to its end.
 *
 * Preview requests carry no bearer token: the token in the URL is the credential, checked by
 * whoever exposed the port (sbxd, or without sbxd the SDK through proxyToSandbox). Headers
 * that carry the clients' token are dropped there too.
 *
 * The Worker's own answers (refusals, a missing configuration, an unreachable container) are
 * JSON in the container's error shape (errors.ts). */
import { getSandbox, proxyToSandbox } from "@cloudflare/sandbox";
import { refuseUnauthorized, withoutClientToken } from "./auth";
import { type Config, ConfigError, type Env, readConfig } from "./config";
import { describe, errorResponse } from "./errors";
import {
	knownSbxdId, parsePreviewHost, type PreviewRoute, rememberSbxdId, rewritePortsAnswer,
	SANDBOX_ID_RE,
} from "./preview";

/* The Worker's handle on a sandbox's Durable Object (Cloudflare calls it a stub). */
type SandboxHandle = ReturnType<typeof getSandbox>;

export async function handle(request: Request, env: Env): Promise<Response> {
	let config: Config;
	try {
		config = readConfig(env);
	} catch (e) {
		if (e instanceof ConfigError)
			return errorResponse(500, "WORKER_MISCONFIGURED", e.message);
		throw e;
	}
	const url = new URL(request.url);
	const preview = parsePreviewHost(url);
	if (preview)
		return servePreview(request, env, config, url, preview);

	const refusal = await refuseUnauthorized(request, config.clientToken);
	if (refusal)
		return refusal;
	const m = /^\/sandbox\/([^/]*)(\/.*)?$/.exec(url.pathname);
	if (!m)
		return errorResponse(404, "NOT_FOUND",
			`no such route: ${url.pathname} (a sandbox's API is at /sandbox/<id>/api/...)`,
			{ path: url.pathname });
	const id = m[1]!.toLowerCase();
	if (!SANDBOX_ID_RE.test(id))
		return errorResponse(400, "INVALID_SANDBOX_ID",
			`invalid sandbox id "${m[1]}": 1 to 63 letters, digits and "-", not starting or ` +
			`ending with "-"`, { sandboxId: m[1] });
	return serveApi(request, env, config, url, id, m[2] ?? "/");
}

/* getSandbox refuses a few ids itself (reserved names such as "www"): a 400 then. */
function sandboxOf(env: Env, config: Config, id: string): SandboxHandle | Response {
	try {
		return getSandbox(env.Sandbox, id, {
			normalizeId: true,
			...(config.sleepAfter !== null ? { sleepAfter: config.sleepAfter } : {}),
		});
	} catch (e) {
		return errorResponse(400, "INVALID_SANDBOX_ID", `invalid sandbox id "${id}": ${describe(e)}`,
			{ sandboxId: id });
	}
}

function unreachable(id: string, e: unknown): Response {
	console.error(`sandbox ${id}: ${describe(e)}`);
	return errorResponse(502, "SANDBOX_UNREACHABLE", `sandbox ${id}: ${describe(e)}`,
		{ sandboxId: id });
}

async function serveApi(request: Request, env: Env, config: Config, url: URL, id: string,
	path: string): Promise<Response> {
	const sandbox = sandboxOf(env, config, id);
	if (sandbox instanceof Response)
		return sandbox;
	const headers = withoutClientToken(request.headers, config.clientToken);
	headers.delete("Authorization");
	if (config.sbxdPort !== null && config.sbxdToken !== null)
		headers.set("Authorization", `Bearer ${config.sbxdToken}`);
	const forwarded = new Request(url.origin + path + url.search, {
		method: request.method,
		headers,
		body: request.body,
		redirect: "manual",
	});
	let resp: Response;
	try {
		resp = await sandbox.containerFetch(forwarded, config.apiPort);
	} catch (e) {
		return unreachable(id, e);
	}
	if (config.sbxdPort !== null && path === "/api/x/ports")
		return rewritePortsAnswer(resp, id, url.protocol, config.previewHost ?? url.host);
	return resp;
}

/* sbxd's own sandbox id (its --sandbox-id), which its preview proxy expects in the Host. */
async function sbxdIdOf(sandbox: SandboxHandle, id: string, config: Config, sbxdPort: number)
	: Promise<string> {
	const known = knownSbxdId(id);
	if (known !== undefined)
		return known;
	const headers = new Headers();
	if (config.sbxdToken !== null)
		headers.set("Authorization", `Bearer ${config.sbxdToken}`);
	const resp = await sandbox.containerFetch(
		new Request("http://sbxd/api/x/capabilities", { headers }), sbxdPort);
	const caps: { sandboxId?: unknown } | null = resp.ok ? await resp.json() : null;
	if (typeof caps?.sandboxId !== "string")
		throw new Error(`sbxd's GET /api/x/capabilities answered HTTP ${resp.status} without ` +
			"a sandboxId (is SBXD_PORT sbxd's port, and SBXD_TOKEN its token?)");
	const sbxdId = caps.sandboxId.toLowerCase();
	rememberSbxdId(id, sbxdId);
	return sbxdId;
}

async function servePreview(request: Request, env: Env, config: Config, url: URL,
	route: PreviewRoute): Promise<Response> {
	const headers = withoutClientToken(request.headers, config.clientToken);
	if (config.sbxdPort === null) {
		const resp = await proxyToSandbox(new Request(request, { headers }), env);
		return resp ?? errorResponse(404, "PREVIEW_NOT_FOUND", "no such preview URL");
	}
	const sandbox = sandboxOf(env, config, route.sandboxId);
	if (sandbox instanceof Response)
		return sandbox;
	try {
		const sbxdId = await sbxdIdOf(sandbox, route.sandboxId, config, config.sbxdPort);
		const target = `http://${route.port}-${sbxdId}-${route.token}.${route.parent}` +
			url.pathname + url.search;
		const forwarded = new Request(target, {
			method: request.method,
			headers,
			body: request.body,
			redirect: "manual",
		});
		if (request.headers.get("Upgrade")?.toLowerCase() === "websocket")
			return await sandbox.wsConnect(forwarded, config.sbxdPort);
		return await sandbox.containerFetch(forwarded, config.sbxdPort);
	} catch (e) {
		return unreachable(route.sandboxId, e);
	}
}
