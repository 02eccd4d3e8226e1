/**
 * Worker threads that call libc synchronously: a blocking call there (read() on /dev/fuse,
 * mount(2) of a file this process serves) keeps its errno and does not stall the main thread.
 *
 * A worker body is a self-contained function — no imports, no variables from the enclosing
 * module — because it is shipped as source text (`fn.toString()`) in a blob: URL. That keeps
 * workers working in the `deno bundle` build, which does not follow `new Worker(new URL(…))`.
 * Helpers it needs are passed in `helpers` (also self-contained functions) and reach the body
 * as an object, so bundler renames cannot break the references.
 */
import { bindLazily, errnoCell, LIBC_SYMBOLS, type LibcSymbols } from "./libc.ts";

/** errno of the last synchronous libc call on the worker's thread. */
export type ErrnoReader = () => number;

// deno-lint-ignore no-explicit-any
type AnyFunction = (...args: any[]) => any;

function workerSource(body: AnyFunction, arg: unknown, helpers: Record<string, AnyFunction>) {
  const helperSource = Object.entries(helpers)
    .map(([name, fn]) => `${JSON.stringify(name)}: (${fn.toString()})`)
    .join(",\n");
  return [
    // Bound on first use: the thread's first message (a FUSE INIT) waited for ~70 stubs.
    `const lib = (${bindLazily.toString()})(${
      JSON.stringify(LIBC_SYMBOLS)
    }, ["__errno_location"]);`,
    `const errno = (${errnoCell.toString()})(() => lib.symbols.__errno_location()).read;`,
    `const helpers = {${helperSource}};`,
    `const body = (${body.toString()});`,
    `const arg = ${JSON.stringify(arg)};`,
  ].join("\n");
}

function spawn(code: string, name: string): Worker {
  const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  try {
    return new Worker(url, { type: "module", name });
  } finally {
    // The worker has fetched its source when the constructor returns.
    URL.revokeObjectURL(url);
  }
}

/**
 * Starts a long-running worker: `body(libc, errno, arg, helpers)` runs once on the worker's
 * thread and talks to this thread with `self.postMessage` / `self.onmessage`.
 * `arg` must survive JSON.
 */
export function startLibcWorker<A, H extends Record<string, AnyFunction> = Record<never, never>>(
  name: string,
  body: (libc: LibcSymbols, errno: ErrnoReader, arg: A, helpers: H) => void,
  arg: A,
  helpers?: H,
): Worker {
  const code = workerSource(body, arg, helpers ?? {}) + "\nbody(lib.symbols, errno, arg, helpers);";
  return spawn(code, name);
}

/**
 * Worker threads started ahead of their use (a reader thread per FUSE connection or NBD
 * device): a thread's start-up then overlaps the caller's other work. `start` makes one that
 * waits for its first message.
 */
export class SpareWorkers {
  readonly #spares: Worker[] = [];

  constructor(private readonly start: () => Worker) {}

  /** Starts threads until `count` are waiting. */
  prestart(count: number): void {
    while (this.#spares.length < count) this.#spares.push(this.start());
  }

  /** A waiting thread, or a new one. */
  take(): Worker {
    return this.#spares.shift() ?? this.start();
  }

  /** Ends the threads nobody took (they would keep the process alive). */
  discard(): void {
    for (const worker of this.#spares.splice(0)) worker.terminate();
  }
}

/**
 * Runs `body(libc, errno, arg, helpers)` once on a fresh worker thread and resolves with its
 * return value (JSON-able); a throw inside becomes a rejection with the same message. The
 * worker is gone when the promise settles.
 */
export function runLibcTask<A, R, H extends Record<string, AnyFunction> = Record<never, never>>(
  name: string,
  body: (libc: LibcSymbols, errno: ErrnoReader, arg: A, helpers: H) => R,
  arg: A,
  helpers?: H,
): Promise<R> {
  const code = workerSource(body, arg, helpers ?? {}) + `
let reply;
try {
  reply = { ok: true, value: body(lib.symbols, errno, arg, helpers) };
} catch (error) {
  reply = { ok: false, message: String(error && error.message || error) };
}
lib.close();
self.postMessage(reply);
self.close();`;
  const worker = spawn(code, name);
  return new Promise<R>((resolve, reject) => {
    worker.onmessage = (event: MessageEvent<{ ok: boolean; value?: R; message?: string }>) => {
      worker.terminate();
      if (event.data.ok) resolve(event.data.value as R);
      else reject(new Error(`${name} worker: ${event.data.message}`));
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      worker.terminate();
      reject(new Error(`${name} worker: ${event.message}`));
    };
  });
}
