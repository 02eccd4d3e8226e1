import { OciError } from "../errors.ts";
import { DOCKER_HUB, DOCKER_HUB_API_HOST } from "./reference.ts";

/** A username and password (or token) for one registry. */
export interface Credentials {
  username: string;
  password: string;
}

/** Docker's key for Docker Hub in config.json and for credential helpers. */
const DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/";
const HELPER_TIMEOUT_MS = 20_000;

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

/**
 * Runs `docker-credential-NAME get` with the server name on stdin; returns undefined when the
 * helper knows no credentials for it. Helper output is JSON `{ServerURL, Username, Secret}`.
 */
export async function runCredentialHelper(
  helper: string,
  serverName: string,
): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(helper)) {
    throw new OciError(`docker config: invalid credential helper name '${helper}'`);
  }
  const program = `docker-credential-${helper}`;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(program, {
      args: ["get"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(HELPER_TIMEOUT_MS),
    }).spawn();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new OciError(
        `credential helper '${program}' not found`,
        "install it or remove it from docker config.json (credsStore / credHelpers)",
      );
    }
    throw error;
  }
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(serverName)).catch(() => {});
  await writer.close().catch(() => {});
  const { code, stdout, stderr } = await child.output();
  const out = new TextDecoder().decode(stdout).trim();
  if (code !== 0) {
    const message = (out || new TextDecoder().decode(stderr)).trim().split("\n")[0];
    // The helper protocol reports a missing entry as this exact text on stdout.
    if (/credentials not found/i.test(message)) return undefined;
    throw new OciError(`credential helper '${program}' failed: ${message.slice(0, 200)}`);
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
  return { username: Username, password: Secret };
}

/**
 * Credentials for `registry` from Docker's config.json: `credHelpers[registry]`, then
 * `credsStore`, then `auths` (base64 `auth`, or `username`/`password`). Undefined when the file
 * or an entry is missing.
 */
export async function dockerConfigCredentials(
  registry: string,
  configPath = dockerConfigPath(),
): Promise<Credentials | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(configPath);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.PermissionDenied) {
      return undefined;
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
        return await runCredentialHelper(helper, serverName);
      }
    }
  }
  if (typeof config.credsStore === "string" && config.credsStore) {
    const found = await runCredentialHelper(config.credsStore, serverName);
    if (found) return found;
  }
  const auths = config.auths;
  if (typeof auths !== "object" || auths === null) return undefined;
  const entries = Object.entries(auths as Record<string, unknown>);
  for (const key of keys) {
    const entry = entries.find(([k]) => k === key) ?? entries.find(([k]) => keyHost(k) === key);
    if (!entry || typeof entry[1] !== "object" || entry[1] === null) continue;
    const { auth, username, password } = entry[1] as Record<string, unknown>;
    if (typeof auth === "string" && auth !== "") {
      return decodeAuthField(auth, `${configPath} auths["${entry[0]}"]`);
    }
    if (typeof username === "string" && typeof password === "string") return { username, password };
  }
  return undefined;
}
