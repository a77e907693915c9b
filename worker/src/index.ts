/* The deployed Worker (wrangler.jsonc's "main"): the request handler, and the classes the
 * platform instantiates by name. ContainerProxy is exported as the SDK asks, for the outbound
 * interception it sets up in some configurations. */
import type { Env } from "./config";
import { handle } from "./handler";

export { ContainerProxy } from "@cloudflare/sandbox";
export { Sandbox } from "./sandbox";

export default {
	fetch: (request, env) => handle(request, env),
} satisfies ExportedHandler<Env>;
