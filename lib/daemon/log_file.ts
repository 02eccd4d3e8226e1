/**
 * Sends the server's console output to its log file: the detached server keeps none of the
 * caller's stdio, so nothing else would ever show its messages. With `--log-format json` every
 * line is one JSON object (time, level, msg), records of lib/log.ts included, so a collector
 * can read the file line by line.
 */
import { isDebug, logFormat, setLogSink, setTextLogSink } from "../log.ts";

/**
 * Where a server log turns over: the log lives in the runtime dir, a tmpfs (memory) on most
 * hosts, and a reader retrying a failing read for days adds a line per try. At this size the
 * log becomes `server.log.1` (replacing the one before) and a new one starts: at most twice this.
 */
export const SERVER_LOG_MAX_BYTES = 4 * 1024 * 1024;

export function redirectConsoleToFile(path: string, maxBytes = SERVER_LOG_MAX_BYTES): void {
  const open = () => Deno.openSync(path, { append: true, create: true, mode: 0o600 });
  let file = open();
  let bytes = file.statSync().size;
  const encoder = new TextEncoder();
  const json = logFormat() === "json";
  /** False when it could not: the log stays as it was (its file still open). */
  const turnOver = (): boolean => {
    try {
      Deno.renameSync(path, `${path}.1`);
      const next = open();
      file.close();
      file = next;
      bytes = 0;
      return true;
    } catch {
      return false;
    }
  };
  const writeLine = (line: string) => {
    try {
      const encoded = encoder.encode(line + "\n");
      // Past its bound and not turned over: the line is dropped, the log is not grown.
      if (bytes > 0 && bytes + encoded.length > maxBytes && !turnOver()) return;
      file.writeSync(encoded);
      bytes += encoded.length;
    } catch { /* the log is best effort; serving matters more */ }
  };
  const write = (level: string, parts: unknown[]) => {
    // A stack trace only with --debug, as on a terminal.
    const ofError = (error: Error) => isDebug() ? (error.stack ?? error.message) : error.message;
    const text = parts.map((p) =>
      typeof p === "string" ? p : p instanceof Error ? ofError(p) : Deno.inspect(p)
    ).join(" ").replace(/^erofs-oci: /, "");
    const time = new Date().toISOString();
    writeLine(json ? JSON.stringify({ time, level, msg: text }) : `${time} ${level} ${text}`);
  };
  // lib/log.ts's records are JSON already: written as they are, not wrapped as a message.
  if (json) setLogSink(writeLine);
  // lib/log.ts's warnings, info and debug lines at their own level, not as stderr's "error".
  else setTextLogSink((level, text) => write(level, [text]));
  console.log = (...parts) => write("info", parts);
  console.info = console.log;
  console.warn = (...parts) => write(json ? "warning" : "warn", parts);
  console.error = (...parts) => write("error", parts);
  console.debug = (...parts) => write("debug", parts);
}
