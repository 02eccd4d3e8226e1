/** The option set shared by commands that talk to a registry (inspect, pull, push, mount). */
import { UsageError } from "../errors.ts";
import { readAtMost } from "../bytes.ts";
import { RegistryClient } from "../oci/client.ts";
import type { Credentials } from "../oci/docker_config.ts";
import { parsePlatform } from "../oci/platform.ts";
import { formatLayoutReference, OciLayout, parseLayoutReference } from "../oci/oci_layout.ts";
import { formatReference, parseReference } from "../oci/reference.ts";
import { warn } from "../log.ts";
import type { OpenedImage, OpenedRegistry } from "../oci/opened.ts";
import { isLocalImage } from "../mount/local_image.ts";
import {
  REGISTRY_OPTIONS,
  REGISTRY_OPTIONS_HELP,
  type RegistryOptionValues,
} from "./registry_option_specs.ts";

import { withLocalPathHint } from "./local_path_hint.ts";

// The option specs live apart so that commands can list them without loading the client.
export { REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP, type RegistryOptionValues };

/** A password or token is at most a few KiB (a JWT: ~2); more on stdin is not one. */
const MAX_STDIN_PASSWORD_BYTES = 64 << 10;

/** Standard input as one line of text, bounded (`cat /dev/zero |` filled memory). */
async function readStdinText(command: string): Promise<string> {
  const bytes = await readAtMost(Deno.stdin.readable, MAX_STDIN_PASSWORD_BYTES);
  if (bytes === undefined) {
    throw new UsageError(
      `${command}: --password-stdin: more than ${MAX_STDIN_PASSWORD_BYTES >> 10} KiB on stdin ` +
        "is no password or token",
      'pipe the password alone, e.g. echo "$TOKEN" | erofs-oci …',
    );
  }
  return new TextDecoder().decode(bytes).replace(/\r?\n$/, "");
}

/** Validates the credential options and returns credentials (reading stdin if asked). */
export async function credentialsFromOptions(
  command: string,
  values: RegistryOptionValues,
): Promise<Credentials | undefined> {
  const { username, password } = values;
  const fromStdin = values["password-stdin"] ?? false;
  if (password !== undefined && fromStdin) {
    throw new UsageError(`${command}: give --password or --password-stdin, not both`);
  }
  if ((password !== undefined || fromStdin) && username === undefined) {
    throw new UsageError(`${command}: --password needs --username`);
  }
  if (username === undefined) return undefined;
  if (password === undefined && !fromStdin) {
    throw new UsageError(
      `${command}: --username needs --password-stdin (or --password)`,
      `e.g. echo "$TOKEN" | erofs-oci ${command} ... --username ${username} --password-stdin`,
    );
  }
  if (password !== undefined) {
    warn("--password on the command line is visible to other users; prefer --password-stdin");
    return { username, password };
  }
  const fromInput = await readStdinText(command);
  if (fromInput === "") throw new UsageError(`${command}: --password-stdin: stdin was empty`);
  return { username, password: fromInput };
}

/**
 * Turns a command's IMAGE argument and parsed REGISTRY_OPTIONS into a reference and a client.
 * Everything is validated before any network access (usage errors exit 2).
 *
 * @example
 * const { values, positionals } = parseCommandArgs("inspect", argv, { ...REGISTRY_OPTIONS });
 * const { ref, client, platform } = await openRegistry("inspect", positionals[0], values);
 */
export async function openRegistry(
  command: string,
  image: string,
  values: RegistryOptionValues,
  /** false: the command takes no credential options for this image (see RegistryClient). */
  credentialOptions = true,
): Promise<OpenedRegistry> {
  // Said as what they are, not as a reference with a bad port or an empty path component.
  if (parseLayoutReference(image)) {
    throw new UsageError(
      `${command}: ${image} is an OCI layout; ${command} works with a registry image here`,
      "name a registry image ([registry[:port]/]name[:tag]); `erofs-oci convert SRC oci:PATH[:TAG]` writes a layout",
    );
  }
  if (/^\.{0,2}\//.test(image)) {
    throw new UsageError(
      `${command}: ${image} is a file path, not an image reference`,
      "name a registry image ([registry[:port]/]name[:tag])" +
        (command === "convert" ? `, or an OCI layout: oci:${image}` : ""),
    );
  }
  const ref = parseReference(image);
  if (values.platform !== undefined) parsePlatform(values.platform);
  if (values["plain-http"] && values.insecure) {
    throw new UsageError(`${command}: --plain-http and --insecure exclude each other`);
  }
  const credentials = await credentialsFromOptions(command, values);
  const plainHttp = values["plain-http"] ? true : undefined;
  const insecure = values.insecure ?? false;
  const client = new RegistryClient(ref.registry, {
    plainHttp,
    insecure,
    credentials,
    credentialOptions,
  });
  const opened: OpenedRegistry = { ref, client, insecure };
  if (values.platform !== undefined) opened.platform = values.platform;
  if (credentials) opened.credentials = credentials;
  if (plainHttp) opened.plainHttp = plainHttp;
  return opened;
}

/**
 * Like openRegistry, but also accepts `oci:PATH[:TAG][@DIGEST]` for a local OCI image layout
 * (registry options other than --platform are ignored then).
 */
export async function openImage(
  command: string,
  image: string,
  values: RegistryOptionValues,
  credentialOptions = true,
): Promise<OpenedImage> {
  const layoutRef = parseLayoutReference(image);
  if (layoutRef) {
    if (values.platform !== undefined) parsePlatform(values.platform);
    const layout = new OciLayout(layoutRef.layoutPath);
    return {
      name: formatLayoutReference(layoutRef),
      repository: "",
      store: layout,
      layout: { ref: layoutRef, layout },
      resolve: () => layout.resolveImage(layoutRef, values.platform),
      close: () => layout.close(),
    };
  }
  if (isLocalImage(image)) {
    throw new UsageError(
      `${command}: ${image} is a file path, not an image reference`,
      "name a registry image ([registry[:port]/]name[:tag]) or an OCI layout (oci:PATH[:TAG])",
    );
  }
  const registry = await openRegistry(command, image, values, credentialOptions);
  return {
    name: formatReference(registry.ref),
    repository: registry.ref.repository,
    store: registry.client,
    registry,
    resolve: () =>
      registry.client.resolveImage(registry.ref, registry.platform).catch((error) => {
        throw withLocalPathHint(image, error);
      }),
    close: () => registry.client.close(),
  };
}
