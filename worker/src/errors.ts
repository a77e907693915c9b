/* The Worker's own answers, in the container's error shape (docs/protocol.md): sbxfs shows the
 * message, and maps the status and errno as it does sbxd's. */

const ERRNO: Record<number, string> = {
	400: "EINVAL",
	401: "EACCES",
	404: "ENOENT",
	500: "EIO",
	502: "EIO",
};

export function errorResponse(status: number, code: string, message: string,
	context: Record<string, unknown> = {}, headers: HeadersInit = {}): Response {
	const body = {
		code,
		message,
		context,
		httpStatus: status,
		errno: ERRNO[status] ?? "EIO",
		timestamp: new Date().toISOString(),
	};
	const h = new Headers(headers);
	h.set("Content-Type", "application/json");
	h.set("Cache-Control", "no-store");
	return new Response(JSON.stringify(body), { status, headers: h });
}

export function describe(e: unknown): string {
	return e instanceof Error ? e.message : String(e);
}
