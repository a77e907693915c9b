/* The clients' bearer token: checking it, and keeping it from the sandbox.
 *
 * The comparison must not tell an attacker how much of a guess was right, so both sides are
 * hashed first (equal lengths, whatever was sent) and compared with the runtime's
 * timingSafeEqual. The token is the only credential for the whole Worker: whoever has it can
 * run anything in any sandbox, so the code in a sandbox must never see it, neither in the API
 * requests forwarded to the container nor in the preview requests that reach the sandbox's own
 * servers. withoutClientToken() drops every header that carries it, in any letter case, as sbxd
 * does with its own token in its preview proxy. */
import { errorResponse } from "./errors";

const encoder = new TextEncoder();

async function sameSecret(given: string, expected: string): Promise<boolean> {
	const [a, b] = await Promise.all([
		crypto.subtle.digest("SHA-256", encoder.encode(given)),
		crypto.subtle.digest("SHA-256", encoder.encode(expected)),
	]);
	return crypto.subtle.timingSafeEqual(a, b);
}

/** null when the request carries `Authorization: Bearer <token>`, else the 401 to answer. */
export async function refuseUnauthorized(request: Request, token: string)
	: Promise<Response | null> {
	const header = request.headers.get("Authorization");
	const m = header === null ? null : /^Bearer +(\S+) *$/i.exec(header);
	if (m && await sameSecret(m[1]!, token))
		return null;
	const challenge = { "WWW-Authenticate": "Bearer" };
	if (header === null)
		return errorResponse(401, "UNAUTHORIZED",
			"missing bearer token: send Authorization: Bearer <the Worker's SBXFS_TOKEN>",
			{}, challenge);
	return errorResponse(401, "UNAUTHORIZED", "missing or invalid bearer token", {}, challenge);
}

/** A copy of headers without any header that carries the token (Authorization included). */
export function withoutClientToken(headers: Headers, token: string): Headers {
	const out = new Headers();
	const needle = token.toLowerCase();
	for (const [name, value] of headers) {
		if (!value.toLowerCase().includes(needle))
			out.append(name, value);
	}
	return out;
}
