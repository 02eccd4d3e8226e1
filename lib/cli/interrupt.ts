/**
 * Ctrl-C (SIGINT), SIGTERM and SIGHUP while a command has steps to undo (`mount`: a server,
 * its FUSE mounts and keeper, layer mounts, the runtime dir). By default such a signal ends
 * the process at once and leaves all of that behind, unrecorded; while an InterruptScope is
 * open the signal aborts its `signal` instead, and the command stops at its next step and
 * undoes what it did.
 */
import { interruptedExitCode, UserError } from "../errors.ts";
import { logFormat, logRecord } from "../log.ts";
import { killCapturedPrograms } from "../../ffi/spawn.ts";
import { endOpenProgressLine } from "./progress.ts";

export { HANGUP_EXIT_CODE, INTERRUPTED_EXIT_CODE, interruptedExitCode } from "../errors.ts";

/** The command was interrupted and undid what it had done. */
export class Interrupted extends UserError {
  constructor(message: string, readonly signal: Deno.Signal = "SIGINT") {
    super(message, undefined, { exitCode: interruptedExitCode(signal) });
  }
}

const SIGNALS: Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];

export interface InterruptScope {
  /** Aborted (reason: an Interrupted) at the first signal. */
  readonly signal: AbortSignal;
  /** Gives the signals their default action back. */
  close(): void;
  /**
   * The work is done and must not be undone: from now on a signal aborts nothing, `late` is
   * told of the first one (also of one that aborted already), and the signals stay caught until
   * close() (their default action would end the process half-way through saying it is done).
   */
  settle(late: (signal: Deno.Signal) => void): void;
  /** What the Interrupted error says for a signal from now on. */
  say(message: string): void;
}

/** Catches the signals until `close()`; `message` is what the Interrupted error says. */
export function catchInterrupts(message: string): InterruptScope {
  const controller = new AbortController();
  let text = message;
  let late: ((signal: Deno.Signal) => void) | undefined;
  const tellLate = (signal: Deno.Signal) => {
    const told = late;
    late = () => {};
    told?.(signal);
  };
  const onSignal = (signal: Deno.Signal) => {
    if (late) tellLate(signal);
    else if (!controller.signal.aborted) controller.abort(new Interrupted(text, signal));
  };
  const stop = onInterrupt(onSignal);
  let closed = false;
  return {
    signal: controller.signal,
    close: () => {
      if (closed) return;
      closed = true;
      stop();
    },
    say: (next) => void (text = next),
    settle: (told) => {
      late = told;
      const reason = controller.signal.reason;
      if (reason instanceof Interrupted) tellLate(reason.signal);
    },
  };
}

let ahead: InterruptScope | undefined;

/**
 * Catches the signals from the moment a command starts work ahead of its own modules (`mount`
 * spawns its server and asks for the manifest while mount.ts loads, lib/cli/mount_ahead.ts):
 * a Ctrl-C then would otherwise end the process without its one line. The command takes the
 * scope over (takeInterruptsAhead); lib/cli/main.ts closes one nobody took.
 */
export function catchInterruptsAhead(message: string): void {
  ahead ??= catchInterrupts(message);
}

/** The scope catchInterruptsAhead opened, if any; the caller closes it. */
export function takeInterruptsAhead(): InterruptScope | undefined {
  const scope = ahead;
  ahead = undefined;
  return scope;
}

/**
 * For work that cannot be stopped half-way in order (a stream pipeline writing files): the
 * caller has removed what it wrote, synchronously, in its signal handler; this says so as
 * main.ts reports an Interrupted error and ends the process with interruptedExitCode(signal).
 */
export function exitInterrupted(message: string, signal: Deno.Signal = "SIGINT"): never {
  killCapturedPrograms();
  const exitCode = interruptedExitCode(signal);
  endOpenProgressLine(); // else the message went on the progress line's end
  if (logFormat() === "json") logRecord("error", message, { exitCode });
  else console.error(`erofs-oci: ${message}`);
  Deno.exit(exitCode);
}

/** Calls `onSignal` at SIGINT, SIGTERM or SIGHUP until the returned function is called. */
export function onInterrupt(onSignal: (signal: Deno.Signal) => void): () => void {
  const listeners = SIGNALS.map((signal) => ({ signal, listener: () => onSignal(signal) }));
  for (const { signal, listener } of listeners) Deno.addSignalListener(signal, listener);
  return () => {
    for (const { signal, listener } of listeners) Deno.removeSignalListener(signal, listener);
  };
}
