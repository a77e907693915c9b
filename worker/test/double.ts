/* A stand-in for the SDK's Sandbox Durable Object and its container, so that the Worker runs
 * under workerd with no containers: the tests bind the Worker's "Sandbox" namespace to this
 * class (test/entry.ts) and leave the Worker's own code as it is deployed.
 *
 * It answers the calls the Worker and the SDK's getSandbox make on a sandbox's stub:
 * configure() (the sandbox's name and options, which the double does without),
 * containerFetch(request, port), and fetch() (wsConnect's WebSockets, proxyToSandbox's preview
 * requests). A container port is a service binding
 * CONTAINER_PORT_<port> that the test points at a local sbxd; a port without one is a port
 * nothing listens on. Port 3000 stands for the SDK's control server of a plain image, which
 * needs no token: the tests put sbxd --no-extensions there, and the double adds that sbxd's
 * token (CONTAINER_TOKEN) on the way.
 *
 * Since the container is the sandbox, the double also checks what the Worker promises never
 * to let into it: a request that carries the clients' token (SBXFS_TOKEN, in any header, in
 * any letter case) is refused with a 400 that fails the test that sent it. And it logs the
 * start of each sandbox's "container", as the platform starts one on first use, with the
 * environment the deployed class (src/sandbox.ts) would give it, for the tests to see which
 * sandboxes were created and how. */
import { DurableObject } from "cloudflare:workers";
import { containerEnv, type Env } from "../src/config";

/* The Worker's bindings, and the test's: CONTAINER_TOKEN and the CONTAINER_PORT_<port>s. */
interface DoubleEnv extends Env {
	CONTAINER_TOKEN?: string;
	[binding: string]: unknown;
}

const CONTROL_PORT = 3000;

function refusal(status: number, code: string, message: string): Response {
	return Response.json({ code, message, httpStatus: status }, { status });
}

export class SandboxDouble extends DurableObject<DoubleEnv> {
	private started = false;

	/* getSandbox() hands the SDK's class its name and options this way; the double needs none */
	async configure(_configuration: unknown): Promise<void> {}

	async containerFetch(request: Request, port: number): Promise<Response> {
		const upstream = this.env[`CONTAINER_PORT_${port}`] as Fetcher | undefined;
		if (!upstream)
			return refusal(500, "INTERNAL_ERROR", `nothing listens on port ${port} in the container`);
		const token = this.env.SBXFS_TOKEN?.toLowerCase();
		for (const [name, value] of request.headers)
			if (token && value.toLowerCase().includes(token))
				return refusal(400, "CLIENT_TOKEN_LEAKED",
					`the Worker let the clients' token into the sandbox (header ${name})`);
		if (!this.started) {
			this.started = true;
			const settings = Object.entries(containerEnv(this.env, this.ctx.id.name))
				.map(([k, v]) => `${k}=${k === "SBXD_TOKEN" ? "(set)" : v}`);
			console.log(`sandbox double: container of sandbox ${this.ctx.id.name} started` +
				(settings.length ? ` with ${settings.join(" ")}` : ""));
		}
		if (port === CONTROL_PORT) {
			if (request.headers.has("Authorization"))
				return refusal(400, "UNEXPECTED_AUTHORIZATION",
					"the Worker sent an Authorization header to the SDK's control server");
			const headers = new Headers(request.headers);
			headers.set("Authorization", `Bearer ${this.env.CONTAINER_TOKEN ?? ""}`);
			request = new Request(request, { headers });
		}
		return upstream.fetch(request);
	}

	override async fetch(request: Request): Promise<Response> {
		if (request.headers.get("x-sandbox-preview-proxy") === "1")
			// the SDK's answer for a port it did not expose: this double exposes none
			return Response.json({ error: "Access denied: Invalid token or port not exposed",
				code: "INVALID_TOKEN" }, { status: 404 });
		const port = Number(request.headers.get("cf-container-target-port") ?? CONTROL_PORT);
		const headers = new Headers(request.headers);
		headers.delete("cf-container-target-port");
		return this.containerFetch(new Request(request, { headers }), port);
	}
}
