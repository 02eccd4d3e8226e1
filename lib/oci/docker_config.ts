import { Errno, interruptedExitCode, OciError } from "../errors.ts";
import { FileRefusedError, readRegularFile } from "../../ffi/files.ts";
import { SysError } from "../../ffi/libc.ts";
import { runCaptured } from "../../ffi/spawn.ts";
import { formatBytes, printable } from "../text.ts";
import { DOCKER_HUB, DOCKER_HUB_API_HOST } from "./reference.ts";

/** A username and password (or token) for one registry. */
export interface Credentials {
  username: string;
  password: string;
}

/** Docker's key for Docker Hub in config.json and for credential helpers. */
const DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/";
/** How long a credential helper may run, and the most it may print (stdout, stderr each). */
export interface HelperLimits {
  timeoutMs: number;
  outputBytes: number;
}

/** Real helpers answer in well under a second, with well under 1 KiB. */
const HELPER_LIMITS: HelperLimits = { timeoutMs: 20_000, outputBytes: 1024 * 1024 };
/** Most config.json may hold; real ones are a few KiB. */
const CONFIG_LIMIT_BYTES = 4 * 1024 * 1024;
/** The Username with which Docker stores an identity token as a helper's Secret. */
const IDENTITY_TOKEN_USERNAME = "<token>";

/** The config.json path Docker uses: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(env: (name: string) => string | undefined = Deno.env.get): string {
  const dir = env("DOCKER_CONFIG");
  if (dir) return `${dir}/config.json`;
  return `${env("HOME") ?? ""}/.docker/config.json`;
}

/** The keys config.json may use for a registry, most specific first. */
function configKeys(registry: string): string[] {
  if (
    registry === DOCKER_HUB || registry === DOCKER_HUB_API_HOST || registry === "index.docker.io"
  ) {
    return [DOCKER_HUB_CONFIG_KEY, "index.docker.io", "docker.io", DOCKER_HUB_API_HOST];
  }
  return [registry];
}

/** Host part of an `auths` key, which may be a URL (`https://host:port/v1/`) or a bare host. */
function keyHost(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
}

function decodeAuthField(auth: string, where: string): Credentials {
  let decoded: string;
  try {
    decoded = new TextDecoder().decode(Uint8Array.from(atob(auth), (c) => c.charCodeAt(0)));
  } catch {
    throw new OciError(`${where}: 'auth' is not valid base64`);
  }
  const colon = decoded.indexOf(":");
  if (colon < 0) throw new OciError(`${where}: 'auth' is not base64 of user:password`);
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** `program` in an absolute directory of $PATH, as an executable regular file. */
function findInPath(program: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    // A relative entry (or an empty one: the current directory) would run whatever the
    // directory the command happens to run in holds, as root.
    if (!dir.startsWith("/")) continue;
    const path = `${dir}/${program}`;
    try {
      const stat = Deno.statSync(path);
      if (stat.isFile && ((stat.mode ?? 0) & 0o111) !== 0) return path;
    } catch { /* not there */ }
  }
  return undefined;
}

/**
 * Runs `docker-credential-NAME get` with the server name on stdin; returns undefined when the
 * helper knows no credentials for it. Helper output is JSON `{ServerURL, Username, Secret}`.
 * A helper past its time or output limit is killed with the processes it started (ffi/spawn.ts
 * runCaptured), and nothing of it is waited for after that.
 */
export async function runCredentialHelper(
  helper: string,
  serverName: string,
  limits: HelperLimits = HELPER_LIMITS,
): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(helper)) {
    throw new OciError(`docker config: invalid credential helper name '${helper}'`);
  }
  const program = `docker-credential-${helper}`;
  const fix = "fix or remove it in docker config.json (credsStore / credHelpers)";
  const path = findInPath(program);
  if (!path) {
    throw new OciError(
      `credential helper '${program}' not found`,
      "install it or remove it from docker config.json (credsStore / credHelpers)",
    );
  }
  const run = await runCaptured(path, ["get"], Deno.env.toObject(), {
    input: new TextEncoder().encode(serverName),
    timeoutMs: limits.timeoutMs,
    maxOutputBytes: limits.outputBytes,
  });
  if (run.outcome === "timeout") {
    throw new OciError(
      `credential helper '${program}' did not answer within ${limits.timeoutMs / 1000} s (killed)`,
      `check it by hand (echo ${serverName} | ${program} get), or ${fix}`,
    );
  }
  if (run.outcome === "interrupted") {
    throw new OciError(
      `interrupted (${run.signal}) while credential helper '${program}' ran; it was stopped too`,
      undefined,
      { exitCode: interruptedExitCode(run.signal) },
    );
  }
  if (run.outcome === "too-much-output") {
    throw new OciError(
      `credential helper '${program}' printed more than ${
        formatBytes(limits.outputBytes)
      } (killed)`,
      fix,
    );
  }
  const { code, stdout, stderr } = run;
  const out = new TextDecoder().decode(stdout).trim();
  if (code !== 0) {
    const message = (out || new TextDecoder().decode(stderr)).trim().split("\n")[0];
    // The helper protocol reports a missing entry as this exact text on stdout.
    if (/credentials not found/i.test(message)) return undefined;
    const why = message
      ? printable(message.slice(0, 200))
      : code > 128
      ? `killed by signal ${code - 128}`
      : `exit code ${code}`;
    throw new OciError(`credential helper '${program}' failed: ${why}`);
  }
  let reply: unknown;
  try {
    reply = JSON.parse(out);
  } catch {
    throw new OciError(`credential helper '${program}' printed something that is not JSON`);
  }
  const { Username, Secret } = (reply ?? {}) as Record<string, unknown>;
  if (typeof Username !== "string" || typeof Secret !== "string") {
    throw new OciError(`credential helper '${program}' reply lacks Username/Secret`);
  }
  if (Secret === "") return undefined;
  // Docker's convention for an identity token (OAuth refresh token) kept by a helper.
  if (Username === IDENTITY_TOKEN_USERNAME) {
    throw identityTokenError(`credential helper '${program}'`);
  }
  return { username: Username, password: Secret };
}

/** An identity token where credentials were expected: not supported, and what to use instead. */
function identityTokenError(where: string): OciError {
  return new OciError(
    `${where} holds an identity token (OAuth refresh token from docker login), which erofs-oci ` +
      "does not support",
    "pass --username and --password-stdin (a password or access token), or log in with " +
      "`docker login -u USER` with a password or access token",
  );
}

/**
 * Credentials for `registry` from Docker's config.json: `credHelpers[registry]`, then
 * `credsStore`, then `auths` (base64 `auth`, or `username`/`password`). Undefined when the file
 * or an entry is missing.
 */
export async function dockerConfigCredentials(
  registry: string,
  configPath = dockerConfigPath(),
  limits: HelperLimits = HELPER_LIMITS,
): Promise<Credentials | undefined> {
  let text: string;
  try {
    text = new TextDecoder().decode(
      await readRegularFile(configPath, CONFIG_LIMIT_BYTES, "docker config"),
    );
  } catch (error) {
    if (
      error instanceof SysError &&
      ([Errno.ENOENT, Errno.EACCES, Errno.ENOTDIR] as number[]).includes(error.errno)
    ) {
      return undefined;
    }
    if (error instanceof FileRefusedError || error instanceof SysError) {
      throw new OciError(
        error instanceof SysError ? `docker config: ${error.message}` : error.message,
        "make it a regular JSON file, or point DOCKER_CONFIG at another directory",
      );
    }
    throw error;
  }
  let config: Record<string, unknown>;
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
    config = parsed;
  } catch {
    throw new OciError(`${configPath} is not a JSON object`);
  }
  const keys = configKeys(registry);
  const serverName = keys[0];
  const helpers = config.credHelpers;
  if (typeof helpers === "object" && helpers !== null) {
    for (const key of keys) {
      const helper = (helpers as Record<string, unknown>)[key];
      if (typeof helper === "string" && helper) {
        return await runCredentialHelper(helper, serverName, limits);
      }
    }
  }
  if (typeof config.credsStore === "string" && config.credsStore) {
    const found = await runCredentialHelper(config.credsStore, serverName, limits);
    if (found) return found;
  }
  const auths = config.auths;
  if (typeof auths !== "object" || auths === null) return undefined;
  const entries = Object.entries(auths as Record<string, unknown>);
  for (const key of keys) {
    const entry = entries.find(([k]) => k === key) ?? entries.find(([k]) => keyHost(k) === key);
    if (!entry || typeof entry[1] !== "object" || entry[1] === null) continue;
    const { auth, username, password, identitytoken } = entry[1] as Record<string, unknown>;
    // `docker login` to an OAuth registry (ACR...) keeps a refresh token, next to an `auth` of
    // a placeholder user with no password: that pair would only be rejected.
    if (typeof identitytoken === "string" && identitytoken !== "") {
      throw identityTokenError(`${configPath} auths["${entry[0]}"]`);
    }
    if (typeof auth === "string" && auth !== "") {
      return decodeAuthField(auth, `${configPath} auths["${entry[0]}"]`);
    }
    if (typeof username === "string" && typeof password === "string") return { username, password };
  }
  return undefined;
}
