/* The Worker as the tests run it under workerd: the deployed handler, with the test double in
 * place of the SDK's Sandbox class (test/double.ts). */
import type { Env } from "../src/config";
import { handle } from "../src/handler";

export { SandboxDouble as Sandbox } from "./double";

export default {
	fetch: (request, env) => handle(request, env),
} satisfies ExportedHandler<Env>;
