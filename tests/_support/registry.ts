/**
 * A real CNCF distribution registry (Debian `docker-registry`, 2.8.2) for tests, on a free
 * loopback port with its own storage directory, with no auth, htpasswd (Basic) auth or token
 * auth backed by the test token server, optionally over HTTPS with a fresh self-signed
 * certificate. Always `stop()` it (or use `await using`).
 */
import { startTokenServer, type TokenServer } from "./token_server.ts";
import { runTool } from "./tool.ts";
import { selfSignedP256 } from "./certs.ts";

export type RegistryAuth = "none" | "basic" | "token";

export interface RegistryOptions {
  auth: RegistryAuth;
  /** Token lifetime at the registry for `auth: "token"` (default 300 s). */
  tokenTtlSeconds?: number;
  /** Deadline for the registry to answer `/v2/` (default 15 s). */
  startTimeoutMs?: number;
  /**
   * Serve HTTPS with a self-signed certificate valid for 127.0.0.1 and `dnsName` (clients
   * must trust `certPath`: DENO_CERT for Deno, the system CA bundle for curl/OpenSSL).
   */
  tls?: { dnsName: string };
}

export interface TestRegistry {
  /** `127.0.0.1:PORT`, usable as the registry part of an image reference. */
  host: string;
  auth: RegistryAuth;
  /** Valid credentials for basic and token auth (also set for "none", unused there). */
  username: string;
  password: string;
  /** Temp directory holding config, logs, htpasswd/keys and `storage/`. */
  dir: string;
  storageDir: string;
  /** Present for `auth: "token"`. */
  tokenServer?: TokenServer;
  /** PEM certificate of the registry, present with `tls` (it is its own issuer). */
  certPath?: string;
  /** The registry's HTTP access log (combined log format lines) so far. */
  accessLog(): Promise<string[]>;
  /**
   * The access log lines that `match`, once there are at least `count` (10 s at most): the
   * registry writes a request's line after its response, which its client may have read in full
   * before that.
   */
  accessLogOnce(match: (line: string) => boolean, count?: number): Promise<string[]>;
  /** Everything the registry printed (access log and app log). */
  rawLog(): Promise<string>;
  /** Headers to reach `repository` with `actions` directly (setup steps with plain fetch). */
  authHeaders(repository: string, actions?: string[]): Promise<Record<string, string>>;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const ACCESS_LOG_LINE = /^\S+ - \S+ \[[^\]]+\] "/;
const ACCESS_LOG_WAIT_MS = 10_000;
const PORT_ATTEMPTS = 5;

/**
 * Where docker-registry keeps the bytes of blob `digest` (`sha256:…`): tests that need a
 * registry serving other bytes than a digest names edit this file.
 */
export function storedBlobPath(registry: { storageDir: string }, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return `${registry.storageDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

export async function startRegistry(options: RegistryOptions): Promise<TestRegistry> {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-registry-" });
  const username = "tester";
  const password = `pw-${crypto.randomUUID()}`;
  let tokenServer: TokenServer | undefined;
  try {
    let authConfig = "";
    if (options.auth === "basic") {
      const htpasswdPath = `${dir}/htpasswd`;
      await Deno.writeTextFile(htpasswdPath, await htpasswdLine(username, password));
      authConfig = `auth:\n  htpasswd:\n    realm: erofs-oci-test\n    path: ${htpasswdPath}\n`;
    } else if (options.auth === "token") {
      tokenServer = await startTokenServer({
        username,
        password,
        service: "erofs-oci-test-registry",
        issuer: "erofs-oci-test-issuer",
        dir,
        ttlSeconds: options.tokenTtlSeconds,
      });
      authConfig = `auth:
  token:
    realm: ${tokenServer.realm}
    service: ${tokenServer.service}
    issuer: ${tokenServer.issuer}
    rootcertbundle: ${tokenServer.certPath}
`;
    }
    let tlsConfig = "";
    let certPath: string | undefined;
    if (options.tls) {
      certPath = `${dir}/registry-cert.pem`;
      const keyPath = `${dir}/registry-key.pem`;
      await selfSignedCertificate(options.tls.dnsName, certPath, keyPath);
      tlsConfig = `  tls:\n    certificate: ${certPath}\n    key: ${keyPath}\n`;
    }
    const storageDir = `${dir}/storage`;
    await Deno.mkdir(storageDir);
    const logPath = `${dir}/registry.log`;
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      const configPath = `${dir}/config.yml`;
      await Deno.writeTextFile(configPath, registryConfig(port, storageDir, authConfig, tlsConfig));
      // `exec` keeps the registry's PID equal to the child's, so stop() kills the registry.
      const child = new Deno.Command("sh", {
        args: ["-c", 'exec docker-registry serve "$1" >>"$2" 2>&1', "sh", configPath, logPath],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const host = `127.0.0.1:${port}`;
      const ready = await waitUntilAnswering(
        host,
        child,
        options.startTimeoutMs ?? 15_000,
        certPath,
      );
      if (ready !== "ok") {
        await killChild(child);
        const log = await readTextOrEmpty(logPath);
        if (attempt < PORT_ATTEMPTS && /address already in use/.test(log)) continue;
        throw new Error(`docker-registry did not start (${ready}):\n${log.slice(-2000)}`);
      }
      const ownTokenServer = tokenServer;
      const accessLogOf = async () =>
        (await readTextOrEmpty(logPath)).split("\n").filter((l) => ACCESS_LOG_LINE.test(l));
      let stopped = false;
      const stop = async () => {
        if (stopped) return;
        stopped = true;
        await killChild(child);
        await ownTokenServer?.stop();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      };
      return {
        host,
        auth: options.auth,
        username,
        password,
        dir,
        storageDir,
        tokenServer,
        certPath,
        accessLog: accessLogOf,
        accessLogOnce: async (match, count = 1) => {
          const deadline = Date.now() + ACCESS_LOG_WAIT_MS;
          for (;;) {
            const lines = (await accessLogOf()).filter(match);
            if (lines.length >= count || Date.now() > deadline) return lines;
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
        },
        rawLog: () => readTextOrEmpty(logPath),
        authHeaders: async (
          repository,
          actions = ["pull", "push"],
        ): Promise<Record<string, string>> => {
          if (options.auth === "basic") {
            return { authorization: `Basic ${btoa(`${username}:${password}`)}` };
          }
          if (ownTokenServer) {
            const token = await ownTokenServer.issue(
              [`repository:${repository}:${actions.join(",")}`],
              username,
            );
            return { authorization: `Bearer ${token}` };
          }
          return {};
        },
        stop,
        [Symbol.asyncDispose]: stop,
      };
    }
  } catch (error) {
    await tokenServer?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }
}

function registryConfig(
  port: number,
  storageDir: string,
  authConfig: string,
  tlsConfig: string,
): string {
  return `version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: ${storageDir}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:${port}
  secret: erofs-oci-test-secret
${tlsConfig}health:
  storagedriver:
    enabled: false
${authConfig}`;
}

/** A port that was free a moment ago (the caller retries if someone takes it meanwhile). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** One htpasswd line with a bcrypt hash (the only hash distribution accepts). */
async function htpasswdLine(username: string, password: string): Promise<string> {
  return (await runTool("htpasswd", ["-Bbn", username, password])).trim() + "\n";
}

/**
 * A self-signed server certificate (EC P-256). Not a CA: rustls (Deno) refuses a CA
 * certificate as the server's own ("CaUsedAsEndEntity"), OpenSSL accepts either.
 */
async function selfSignedCertificate(dnsName: string, certPath: string, keyPath: string) {
  await selfSignedP256({
    subject: `/CN=${dnsName}`,
    keyPath,
    certPath,
    extensions: [
      `subjectAltName=DNS:${dnsName},IP:127.0.0.1`,
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
    ],
  });
}

async function waitUntilAnswering(
  host: string,
  child: Deno.ChildProcess,
  timeoutMs: number,
  certPath?: string,
): Promise<"ok" | "exited" | "timeout"> {
  let exited = false;
  child.status.then(() => exited = true);
  const client = certPath
    ? Deno.createHttpClient({ caCerts: [await Deno.readTextFile(certPath)] })
    : undefined;
  const url = `${certPath ? "https" : "http"}://${host}/v2/`;
  try {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (exited) return "exited";
      try {
        const response = await fetch(url, { signal: AbortSignal.timeout(1000), client });
        await response.body?.cancel();
        // 401 also proves the registry is serving (auth enabled).
        if (response.status === 200 || response.status === 401) return "ok";
      } catch { /* not listening yet */ }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return "timeout";
  } finally {
    client?.close();
  }
}

async function killChild(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const killed = await Promise.race([
    child.status.then(() => true),
    new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 3000)),
  ]);
  clearTimeout(timer);
  if (!killed) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
  }
}

async function readTextOrEmpty(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return "";
  }
}
