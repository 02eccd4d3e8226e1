/**
 * The image's manifest GET, started by mount_ahead.ts right after the server is spawned ahead,
 * while mount's own modules still load (~60-80 ms of a cold mount): the metadata the server
 * pins waits for the chain manifest -> chunk table -> metadata, so its first link starts as
 * early as the command line allows. Only a quick look at the command line: mount.ts takes the
 * GET (takeManifestAhead) only when its real parse names the same image with the same client
 * options, and ends it otherwise (discardManifestAhead). Not started for what the early look
 * cannot judge alike: credentials on the command line (stdin is mount's to read), a local
 * file or OCI layout.
 */
import { RegistryClient } from "../oci/client.ts";
import { manifestReference, parseReference } from "../oci/reference.ts";
import { type FetchedManifest, fetchManifest } from "../oci/resolve.ts";
import { mark } from "../timing.ts";
import { MOUNT_OPTIONS } from "./mount_option_specs.ts";
import { parseCommandArgs } from "./command.ts";

/** The client options of a registry image (openRegistry's, without credentials). */
export interface AheadKey {
  image: string;
  plainHttp?: boolean;
  insecure: boolean;
}

/** What mount takes over: the client the manifest came through, and the manifest. */
export interface ManifestAhead {
  client: RegistryClient;
  /** fetchManifest of the reference's tag or digest; rejects as it does. */
  top: Promise<FetchedManifest>;
}

let ahead: (ManifestAhead & { key: AheadKey; abort: AbortController }) | undefined;
/** Set once mount has taken or discarded it: a start after that does nothing. */
let settled = false;

function sameKey(a: AheadKey, b: AheadKey): boolean {
  return a.image === b.image && a.plainHttp === b.plainHttp && a.insecure === b.insecure;
}

function namesLocalImage(image: string): boolean {
  if (/^(\/|\.\/|\.\.\/|oci:)/.test(image)) return true;
  try {
    Deno.statSync(image);
    return true; // a file or directory of that name: mount.ts decides
  } catch {
    return false;
  }
}

/** Starts the manifest GET of `argv` (mount's arguments) when it is a plain registry image. */
export function startManifestAhead(argv: string[]): void {
  if (settled || ahead) return;
  let values, positionals;
  try {
    ({ values, positionals } = parseCommandArgs("mount", argv, MOUNT_OPTIONS));
  } catch {
    return; // mount.ts reports it
  }
  const image = positionals[0];
  if (positionals.length !== 2 || values.help || namesLocalImage(image)) return;
  if (values.username !== undefined || values.password !== undefined) return;
  if (values["password-stdin"] || (values["plain-http"] && values.insecure)) return;
  let ref;
  try {
    ref = parseReference(image);
  } catch {
    return;
  }
  const key: AheadKey = {
    image,
    plainHttp: values["plain-http"] ? true : undefined,
    insecure: values.insecure ?? false,
  };
  const client = new RegistryClient(ref.registry, {
    plainHttp: key.plainHttp,
    insecure: key.insecure,
  });
  const abort = new AbortController();
  const top = fetchManifest(client, ref.repository, manifestReference(ref), abort.signal);
  top.catch(() => {}); // awaited by resolveImage, or dropped with discardManifestAhead
  ahead = { key, client, top, abort };
  mark("cli: manifest asked ahead");
}

/**
 * The GET started ahead, when it was for `key` (what openRegistry made of the real command
 * line, without credentials); it is then mount's. Either way nothing is started after this.
 */
export function takeManifestAhead(key: AheadKey): ManifestAhead | undefined {
  settled = true;
  const taken = ahead;
  if (!taken || !sameKey(taken.key, key)) {
    discardManifestAhead();
    return undefined;
  }
  ahead = undefined;
  return { client: taken.client, top: taken.top };
}

/** Ends a GET started ahead that mount did not take (a usage error, another image…). */
export function discardManifestAhead(): void {
  settled = true;
  const left = ahead;
  ahead = undefined;
  if (!left) return;
  left.abort.abort();
  left.client.close();
}
