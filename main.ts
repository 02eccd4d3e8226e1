// CLI entry only: everything else lives in lib/.
import { runCli } from "./lib/cli/main.ts";

if (import.meta.main) {
  Deno.exitCode = await runCli(Deno.args);
}
