/**
 * An image name that is also a path here (`app` beside a directory `app`) went to a registry
 * (Docker Hub for a bare name): when that fails, say how to name the local path instead. A
 * name without a registry host that is no path here either (`nodir/x.erofs`, a path mistyped)
 * failed as Docker Hub's ("cannot reach registry registry-1.docker.io"): say that too.
 */
import { UserError } from "../errors.ts";
import { isRegistryHost } from "../oci/reference.ts";

export function withLocalPathHint(image: string, error: unknown): unknown {
  if (!(error instanceof UserError) || /^(\/|\.\.?\/|oci:)/.test(image)) {
    return error;
  }
  let kind: string;
  try {
    kind = Deno.statSync(image).isDirectory ? "a directory" : "a file";
  } catch {
    const slash = image.indexOf("/");
    if (slash >= 0 && isRegistryHost(image.slice(0, slash))) return error;
    return new UserError(
      error.message,
      `${image} names a Docker Hub image (it has no registry host); no file or directory of ` +
        "that name is here either",
      { cause: error, exitCode: error.exitCode },
    );
  }
  return new UserError(
    error.message,
    `${image} is also ${kind} here, but an image name goes to a registry: write ./${image} ` +
      `for the path${kind === "a directory" ? ` (oci:./${image} for an OCI layout)` : ""}`,
    { cause: error, exitCode: error.exitCode },
  );
}
