/**
 * Sends the server's console output to its log file: the detached server keeps none of the
 * caller's stdio, so nothing else would ever show its messages.
 */
export function redirectConsoleToFile(path: string): void {
  const file = Deno.openSync(path, { append: true, create: true, mode: 0o600 });
  const encoder = new TextEncoder();
  const write = (level: string, parts: unknown[]) => {
    const text = parts.map((p) =>
      typeof p === "string" ? p : p instanceof Error ? (p.stack ?? p.message) : Deno.inspect(p)
    ).join(" ");
    try {
      file.writeSync(encoder.encode(`${new Date().toISOString()} ${level} ${text}\n`));
    } catch { /* the log is best effort; serving matters more */ }
  };
  console.log = (...parts) => write("info", parts);
  console.info = console.log;
  console.warn = (...parts) => write("warn", parts);
  console.error = (...parts) => write("error", parts);
  console.debug = (...parts) => write("debug", parts);
}
