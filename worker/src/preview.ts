/* Preview URLs of exposed ports: http(s)://<port>-<sandbox id>-<token>.<host>/, the SDK's form.
 *
 * Which server owns them depends on the image. Without sbxd, ports are exposed through the SDK
 * (its Durable Object keeps the tokens) and the SDK's proxyToSandbox serves the URLs. With sbxd,
 * sbxd exposes the ports (POST /api/x/ports), keeps the tokens and serves the URLs itself: its
 * preview proxy takes a request whose Host is "<port>-<sbxd's sandbox id>-<token>.<anything>"
 * (docs/protocol.md, "Ports and preview URLs"). Two things then differ between what sbxd knows
 * and what a user can reach, and the Worker translates both:
 *
 *   - the URLs in sbxd's /api/x/ports answers name sbxd's own id and host (its --sandbox-id,
 *     and whatever address it was started with); the Worker rewrites each into its own form,
 *     under its public host (PREVIEW_HOST, else the host the request came to) with the
 *     Worker's sandbox id, keeping the port and the token, which are sbxd's;
 *   - a preview request names the Worker's sandbox id; the Worker passes it to sbxd with
 *     sbxd's id in its place. sbxd's id is learnt from the URLs it answers and otherwise read
 *     from GET /api/x/capabilities ("sandboxId"), and kept per sandbox in this isolate.
 *
 * When sbxd already makes URLs in the Worker's form (started with the Worker's sandbox id and
 * public host), both translations change nothing. */

/** The SDK's rules for a preview host's sandbox id (and the Worker's for all its ids): a DNS
 * label, lower case once normalised. */
export const SANDBOX_ID_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export interface PreviewRoute {
	port: number;
	sandboxId: string;
	token: string;
	/** The host after the first label, port included: "sbx.example.com", "localhost:8787". */
	parent: string;
}

/** The route a preview URL's host names, or null when the host is not one. The same grammar
 * as the SDK's proxyToSandbox: "<4-5 digits>-<id>-<token>" as the first label, the token
 * after the last "-". */
export function parsePreviewHost(url: URL): PreviewRoute | null {
	const host = url.host.toLowerCase();
	const dot = host.indexOf(".");
	if (dot < 0)
		return null;
	const m = /^(\d{4,5})-(.+)-([a-z0-9_]{1,63})$/.exec(host.slice(0, dot));
	if (!m)
		return null;
	const port = Number(m[1]);
	if (port < 1024 || port > 65535 || !SANDBOX_ID_RE.test(m[2]!))
		return null;
	return { port, sandboxId: m[2]!, token: m[3]!, parent: host.slice(dot + 1) };
}

/* sbxd's --sandbox-id per Worker sandbox id. Bounded: an isolate may serve many sandboxes. */
const SBXD_IDS_MAX = 1024;
const sbxdIds = new Map<string, string>();

export function rememberSbxdId(sandboxId: string, sbxdId: string): void {
	sbxdIds.delete(sandboxId);
	if (sbxdIds.size >= SBXD_IDS_MAX)
		sbxdIds.delete(sbxdIds.keys().next().value!);
	sbxdIds.set(sandboxId, sbxdId);
}

export function knownSbxdId(sandboxId: string): string | undefined {
	return sbxdIds.get(sandboxId);
}

/** What the Worker's form of one of sbxd's preview URLs is; the URL itself when it is not
 * one (then it is left as sbxd made it). */
function publicUrl(sbxdUrl: string, sandboxId: string, scheme: string, host: string): string {
	let u: URL;
	try {
		u = new URL(sbxdUrl);
	} catch {
		return sbxdUrl;
	}
	const label = u.hostname.split(".")[0]!;
	const m = /^(\d{1,5})-(.+)-([a-z0-9_]+)$/.exec(label);
	if (!m)
		return sbxdUrl;
	rememberSbxdId(sandboxId, m[2]!);
	return `${scheme}//${m[1]}-${sandboxId}-${m[3]}.${host}/`;
}

/** sbxd's answer to GET or POST /api/x/ports with each "url" in the Worker's form. The answer
 * is small JSON (at most 256 ports); anything else passes unchanged. */
export async function rewritePortsAnswer(resp: Response, sandboxId: string, scheme: string,
	host: string): Promise<Response> {
	if (!resp.ok || !(resp.headers.get("Content-Type") ?? "").includes("application/json"))
		return resp;
	const text = await resp.text();
	let body: { url?: unknown; ports?: unknown };
	try {
		body = JSON.parse(text);
	} catch {
		return new Response(text, { status: resp.status, statusText: resp.statusText,
			headers: resp.headers });
	}
	const fix = (o: { url?: unknown }) => {
		if (typeof o.url === "string")
			o.url = publicUrl(o.url, sandboxId, scheme, host);
	};
	if (body && typeof body === "object") {
		fix(body);
		if (Array.isArray(body.ports))
			for (const p of body.ports)
				if (p && typeof p === "object")
					fix(p);
	}
	const headers = new Headers(resp.headers);
	headers.delete("Content-Length");
	return new Response(JSON.stringify(body), { status: resp.status, statusText: resp.statusText,
		headers });
}
