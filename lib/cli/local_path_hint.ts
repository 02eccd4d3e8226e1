/**
 * An image name that is also a path here (`app` beside a directory `app`) went to a registry
 * (Docker Hub for a bare name): when that fails, say how to name the local path instead.
 */
import { UserError } from "../errors.ts";

export function withLocalPathHint(image: string, error: unknown): unknown {
  if (!(error instanceof UserError) || /^(\/|\.\.?\/|oci:)/.test(image)) {
    return error;
  }
  let kind: string;
  try {
    kind = Deno.statSync(image).isDirectory ? "a directory" : "a file";
  } catch {
    return error;
  }
  return new UserError(
    error.message,
    `${image} is also ${kind} here, but an image name goes to a registry: write ./${image} ` +
      `for the path${kind === "a directory" ? ` (oci:./${image} for an OCI layout)` : ""}`,
    { cause: error, exitCode: error.exitCode },
  );
}
