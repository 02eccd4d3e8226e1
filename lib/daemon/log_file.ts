/**
 * Sends the server's console output to its log file: the detached server keeps none of the
 * caller's stdio, so nothing else would ever show its messages. With `--log-format json` every
 * line is one JSON object (time, level, msg), records of lib/log.ts included, so a collector
 * can read the file line by line.
 */
import { isDebug, logFormat, setLogSink, setTextLogSink } from "../log.ts";

export function redirectConsoleToFile(path: string): void {
  const file = Deno.openSync(path, { append: true, create: true, mode: 0o600 });
  const encoder = new TextEncoder();
  const json = logFormat() === "json";
  const writeLine = (line: string) => {
    try {
      file.writeSync(encoder.encode(line + "\n"));
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
