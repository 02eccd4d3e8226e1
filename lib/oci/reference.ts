import { OciError } from "../errors.ts";

/**
 * A parsed image reference: `[registry[:port]/]name[:tag][@digest]`.
 *
 * `registry` is the name the user wrote (`docker.io` for Docker Hub); `registryApiHost` maps it to
 * the host that serves the API.
 */
export interface ImageReference {
  /** Registry host with optional port, e.g. `localhost:5000`, `ghcr.io`, `docker.io`. */
  registry: string;
  /** Repository path, e.g. `library/alpine`. */
  repository: string;
  /** Tag, when given. */
  tag?: string;
  /** `algorithm:hex` digest, when given; it pins the manifest (or index). */
  digest?: string;
}

/** Docker Hub's canonical registry name and the host serving its API. */
export const DOCKER_HUB = "docker.io";
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";

// Grammar from the distribution reference spec (github.com/distribution/reference, reference.go).
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST_LABEL = /^(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])$/;
const IPV6_HOST = /^\[[0-9A-Fa-f:.]+\]$/;
const PORT = /^[0-9]{1,5}$/;
/** Digests we can verify: sha256 and sha512 with lowercase hex of the right length. */
export const DIGEST_PATTERN = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const MAX_NAME_LENGTH = 255;

function invalid(text: string, why: string): OciError {
  const shown = text.length > 80 ? `${text.slice(0, 77)}...` : text;
  return new OciError(
    `invalid image reference '${JSON.stringify(shown).slice(1, -1)}': ${why}`,
    "expected [registry[:port]/]name[:tag][@sha256:<64 hex>]",
    { exitCode: 2 },
  );
}

/** Checks an `algorithm:hex` digest; throws OciError naming what is wrong. */
export function validateDigest(digest: string, what = "digest"): string {
  if (DIGEST_PATTERN.test(digest)) return digest;
  const shown = JSON.stringify(digest.length > 80 ? `${digest.slice(0, 77)}...` : digest);
  const colon = digest.indexOf(":");
  const algorithm = colon < 0 ? "" : digest.slice(0, colon);
  const why = colon < 0
    ? "missing 'sha256:' prefix"
    : algorithm !== "sha256" && algorithm !== "sha512"
    ? `unsupported algorithm '${JSON.stringify(algorithm).slice(1, -1)}' (sha256 or sha512)`
    : `expected ${algorithm === "sha256" ? 64 : 128} lowercase hex digits`;
  throw new OciError(`invalid ${what} ${shown}: ${why}`, undefined, { exitCode: 2 });
}

/** Whether a reference's first component names a registry host (else it is Docker Hub's). */
export function isRegistryHost(component: string): boolean {
  // Same rule as Docker: a first component with '.' or ':' or exactly "localhost" is a host.
  return component.includes(".") || component.includes(":") || component === "localhost" ||
    component.startsWith("[");
}

function checkHost(text: string, host: string): void {
  let name = host;
  let port: string | undefined;
  if (host.startsWith("[")) {
    const end = host.indexOf("]");
    if (end < 0) throw invalid(text, `registry '${host}' has an unclosed '['`);
    name = host.slice(0, end + 1);
    const rest = host.slice(end + 1);
    if (rest !== "") {
      if (!rest.startsWith(":")) throw invalid(text, `unexpected '${rest}' after IPv6 address`);
      port = rest.slice(1);
    }
    if (!IPV6_HOST.test(name)) {
      throw invalid(text, `registry '${host}' is not a valid IPv6 address`);
    }
  } else {
    const colon = host.indexOf(":");
    if (colon >= 0) {
      name = host.slice(0, colon);
      port = host.slice(colon + 1);
    }
    if (name === "") throw invalid(text, "empty registry host");
    for (const label of name.split(".")) {
      if (!HOST_LABEL.test(label)) {
        throw invalid(text, `registry host '${name}' is not a valid host name`);
      }
    }
  }
  if (port !== undefined && (!PORT.test(port) || Number(port) < 1 || Number(port) > 65535)) {
    throw invalid(text, `registry port '${port}' is not a number in 1..65535`);
  }
}

/**
 * Parses `[registry[:port]/]name[:tag][@sha256:…]` with Docker Hub defaults: no registry means
 * `docker.io`, and a single-component Docker Hub name gets `library/`. Neither tag nor digest is
 * filled in here (callers default to `latest`). Throws a one-line OciError (exit code 2) saying
 * what is wrong.
 *
 * @example
 * parseReference("localhost:5000/app:v1") // {registry: "localhost:5000", repository: "app", tag: "v1"}
 * parseReference("alpine")                // {registry: "docker.io", repository: "library/alpine"}
 */
export function parseReference(text: string): ImageReference {
  if (text === "") throw invalid(text, "empty");
  // deno-lint-ignore no-control-regex -- control characters are exactly what is refused here
  if (/[\s\x00-\x1f\x7f]/.test(text)) {
    throw invalid(text, "contains whitespace or control characters");
  }
  // A URL (http://host/app:v1) or skopeo's transport (docker://…) is a common first try.
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1];
  if (scheme) {
    throw invalid(
      text,
      `a reference has no scheme: drop '${scheme}://'${
        scheme.toLowerCase() === "http" ? " (and pass --plain-http)" : ""
      }`,
    );
  }
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (digest === "") throw invalid(text, "empty digest after '@'");
    if (digest.includes("@")) throw invalid(text, "more than one '@'");
    try {
      validateDigest(digest);
    } catch (error) {
      throw invalid(
        text,
        (error as Error).message.replace(/^invalid digest "[^"]*": /, "digest: "),
      );
    }
  }
  let tag: string | undefined;
  const lastColon = rest.lastIndexOf(":");
  const lastSlash = rest.lastIndexOf("/");
  if (lastColon > lastSlash && !(lastSlash < 0 && rest.startsWith("["))) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (tag === "") throw invalid(text, "empty tag after ':'");
    if (!TAG.test(tag)) {
      throw invalid(
        text,
        tag.length > 128
          ? "tag longer than 128 characters"
          : `tag '${tag}' may only contain letters, digits, '_', '.', '-' (not first)`,
      );
    }
  }
  if (rest === "") throw invalid(text, "missing repository name");
  let registry = DOCKER_HUB;
  let repository = rest;
  const firstSlash = rest.indexOf("/");
  if (firstSlash >= 0 && isRegistryHost(rest.slice(0, firstSlash))) {
    registry = rest.slice(0, firstSlash);
    repository = rest.slice(firstSlash + 1);
    checkHost(text, registry);
    if (repository === "") throw invalid(text, "missing repository name after the registry");
  } else if (firstSlash < 0 && tag !== undefined && /^[0-9]+$/.test(tag) && isRegistryHost(rest)) {
    // "localhost:5000" or "reg.example.com:5000" alone would be a Docker Hub name with a numeric
    // tag; that is nearly always a forgotten repository.
    throw invalid(text, `'${rest}:${tag}' looks like a registry; add /REPOSITORY`);
  }
  for (const component of repository.split("/")) {
    if (component === "") throw invalid(text, "empty path component in repository name");
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(
        text,
        /[A-Z]/.test(component)
          ? `repository name '${repository}' must be lowercase`
          : `repository component '${component}' may only contain a-z, 0-9 and single separators '.', '_', '__', '-'`,
      );
    }
  }
  if (registry === "index.docker.io") registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) {
    throw invalid(text, `name longer than ${MAX_NAME_LENGTH} characters`);
  }
  const ref: ImageReference = { registry, repository };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

/** Formats a reference back to its full text form (`registry/repository[:tag][@digest]`). */
export function formatReference(ref: ImageReference): string {
  let text = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) text += `:${ref.tag}`;
  if (ref.digest !== undefined) text += `@${ref.digest}`;
  return text;
}

/** The manifest reference to request: the digest when pinned, else the tag, else `latest`. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? "latest";
}

/** Maps a registry name to the host serving its API (`docker.io` → `registry-1.docker.io`). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB || registry === "index.docker.io" ? DOCKER_HUB_API_HOST : registry;
}

/**
 * True for `localhost`, `127.x.x.x` and `[::1]` (with or without port, any letter case: host
 * names are case-insensitive, `LOCALHOST:5000` went to HTTPS): plain HTTP by default.
 */
export function isLoopbackRegistry(registry: string): boolean {
  const lower = registry.toLowerCase();
  const host = lower.startsWith("[")
    ? lower.slice(0, lower.indexOf("]") + 1)
    : lower.replace(/:[0-9]*$/, "");
  return host === "localhost" || host === "[::1]" || /^127\.[0-9]+\.[0-9]+\.[0-9]+$/.test(host);
}
