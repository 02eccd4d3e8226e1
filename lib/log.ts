/** Diagnostics on stderr; stdout stays for data so `--json` output can be piped. */
import { capped, printable } from "./text.ts";
import { describeErrno, plainOsErrors } from "./errors.ts";
let debugEnabled = false;

/**
 * `text` (default): lines for people. `json`: one JSON object per line (time, level, msg and
 * fields) for log collectors. Kept in EROFS_OCI_LOG_FORMAT too, so the mount server a mount
 * re-executes logs the same way.
 */
export type LogFormat = "text" | "json";
let format: LogFormat = Deno.env.get("EROFS_OCI_LOG_FORMAT") === "json" ? "json" : "text";

export function setDebug(on: boolean): void {
  debugEnabled = on;
}

export function isDebug(): boolean {
  return debugEnabled;
}

export function setLogFormat(value: LogFormat): void {
  format = value;
  Deno.env.set("EROFS_OCI_LOG_FORMAT", value);
}

export function logFormat(): LogFormat {
  return format;
}

let sink: ((line: string) => void) | undefined;
let textSink: ((level: string, text: string) => void) | undefined;

/**
 * Where text-format warnings, info and debug lines go instead of stderr, with their level (a
 * mount server's log file: on stderr they carry it as a prefix, or not at all).
 */
export function setTextLogSink(write?: (level: string, text: string) => void): void {
  textSink = write;
}

/** Where JSON records go instead of stderr (a mount server's log file). */
export function setLogSink(write: (line: string) => void): void {
  sink = write;
}

/** One structured record on stderr (json format); `fields` must not override the basics. */
export function logRecord(level: string, msg: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ ...fields, time: new Date().toISOString(), level, msg });
  if (sink) sink(line);
  else console.error(line);
}

export function debug(...parts: unknown[]): void {
  if (!debugEnabled) return;
  if (format === "json") {
    logRecord("debug", parts.map((p) => typeof p === "string" ? p : Deno.inspect(p)).join(" "));
  } else if (textSink) {
    textSink("debug", parts.map((p) => typeof p === "string" ? p : Deno.inspect(p)).join(" "));
  } else console.error("debug:", ...parts);
}

/** Deno's OS error texts read as ours there too; --debug keeps the errno's name. */
export function warn(rawMessage: string): void {
  const { text, errnos } = plainOsErrors(rawMessage);
  const message = !debugEnabled
    ? capped(text)
    : errnos.length > 0
    ? `${text} [${errnos.map(describeErrno).join(", ")}]`
    : text;
  if (format === "json") logRecord("warning", message);
  else if (textSink) textSink("warn", printable(message));
  else console.error(`erofs-oci: warning: ${printable(message)}`);
}

/**
 * warn() at most once per `everyMs` for a repeating failure (a flood of bad clients or reads):
 * the first at once, later ones with how many were left out since the last line.
 */
export function throttledWarning(everyMs: number, what: string): (message: string) => void {
  let warnedAt = -Infinity;
  let leftOut = 0;
  return (message) => {
    const now = performance.now();
    if (now - warnedAt < everyMs) {
      leftOut++;
      return;
    }
    warn(leftOut ? `${message} (${leftOut} more ${what} since the last warning)` : message);
    warnedAt = now;
    leftOut = 0;
  };
}

/** Info lines quote paths and image data too: no raw control characters (as warn's, errors'). */
export function info(message: string): void {
  if (format === "json") logRecord("info", message);
  else if (textSink) textSink("info", printable(message));
  else console.error(printable(message));
}
