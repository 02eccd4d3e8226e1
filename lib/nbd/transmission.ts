/**
 * The NBD transmission phase of a read-only export: what the kernel (after a netlink CONNECT)
 * and user-space clients (after the handshake) send on the socket. READs run concurrently and
 * are answered as they complete, in any order (the cookie matches them up); the replies of one
 * connection are written one at a time, each in one piece.
 */
import { abortable } from "../source/abortable.ts";
import { fillTrace, fillTraceEnabled } from "../source/fill_trace.ts";
import type { Source } from "../source/source.ts";
import type { ConnActivity } from "./activity.ts";
import { type BudgetAccount, InflightBudget } from "./budget.ts";
import { BufferedReader } from "./buffered_reader.ts";
import { type NbdConn, SerialWriter, UnexpectedEof } from "./conn_io.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_EPERM,
  NBD_MAX_REQUEST_BYTES,
  NBD_REPLY_BYTES,
  NBD_REQUEST_BYTES,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
} from "./protocol.ts";

/** A source that can read straight into a caller's buffer (CachedSource can). */
type IntoSource = Source & {
  readInto?(offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<void>;
};

export interface TransmissionOptions {
  /** Only read-only exports exist: writes and trims are refused with EPERM. */
  readOnly: true;
  /**
   * READs longer than this get EINVAL. Default 32 MiB (the protocol's default maximum), or less
   * when the byte budget could never grant that much.
   */
  maxRequestBytes?: number;
  /** Requests served at once; beyond it the socket is not read until one finishes. Default 128. */
  maxInFlight?: number;
  /**
   * This connection's account in a byte budget shared with other connections (a server with
   * many untrusted clients). READ reply buffers are allocated only once granted; until then
   * the socket is not read (back-pressure).
   */
  budget?: BudgetAccount;
  /**
   * Without `budget`: bytes of READ replies this connection alone may hold. Default 64 MiB:
   * plenty to keep a socket busy, and a client that never reads its replies pins no more.
   */
  maxInFlightBytes?: number;
  /** Told whether the connection is waiting on the server (not idle) or on its client. */
  activity?: ConnActivity;
  /** Allocates a READ reply buffer (zero-filled). Tests replace it to make allocation fail. */
  allocateReply?(bytes: number): Uint8Array;
  /** Called after each reply is written (for stats and debug logs). */
  onRequest?(event: RequestEvent): void;
  /** Aborting closes the connection and gives up on requests in flight. */
  signal?: AbortSignal;
  /**
   * The export size the client was told: a READ reaching past it gets EINVAL (the NBD spec's
   * SHOULD). Unset for the kernel's device, whose size is rounded up to its block size: the
   * part of its last block past the source reads as zeros.
   */
  exportBytes?: number;
}

export interface RequestEvent {
  type: number;
  offset: number;
  length: number;
  /** errno sent back, 0 on success. */
  error: number;
  /** Set when the source failed the read. */
  cause?: unknown;
}

export interface TransmissionEnd {
  /**
   * disconnect: the client sent DISC; eof: it closed the socket; closed: the socket failed or
   * was closed under us; protocol: it broke the protocol (bad magic, truncated request);
   * aborted: options.signal.
   */
  reason: "disconnect" | "eof" | "closed" | "protocol" | "aborted";
  requests: number;
  detail?: string;
}

const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);

/** serveRead's outcome when its READ's bytes went to the budget's pool (BudgetAccount.keepUntil). */
const KEPT_IN_POOL = Symbol("kept in pool");

/**
 * Serves NBD requests on `conn` from `source` until the client disconnects, the socket fails or
 * `signal` aborts; then closes `conn`. Never rejects: how it ended is in the result.
 */
export async function serveTransmission(
  conn: NbdConn,
  source: IntoSource,
  options: TransmissionOptions,
): Promise<TransmissionEnd> {
  const account = options.budget ??
    new InflightBudget(options.maxInFlightBytes ?? 64 * 1024 * 1024, 1).account();
  const maxRequestBytes = Math.min(
    options.maxRequestBytes ?? NBD_MAX_REQUEST_BYTES,
    account.budget.maxGrantBytes,
  );
  const maxInFlight = options.maxInFlight ?? 128;
  const allocateReply = options.allocateReply ?? ((bytes: number) => new Uint8Array(bytes));
  const reader = new BufferedReader(conn);
  const writer = new SerialWriter(conn);
  const stop = new AbortController();
  const onAbort = () => {
    stop.abort(options.signal?.reason);
    closeQuietly(conn); // unblocks a pending read
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });

  let inFlight = 0;
  let sourceReads = 0;
  let pendingWrites = 0;
  let waitingForBudget = false;
  /** The loop waits for the next request (owed once its first bytes came) or a WRITE payload. */
  let readingRequest = false;
  let skippingPayload = false;
  let slotFreed: (() => void) | undefined;
  const running = new Set<Promise<void>>();
  let requests = 0;
  if (options.activity) {
    // Waiting for budget is the server's doing, unless replies are stuck behind this client.
    options.activity.clientOwes = () =>
      !(sourceReads > 0 || (waitingForBudget && pendingWrites === 0)) &&
      (pendingWrites > 0 || skippingPayload || (readingRequest && reader.available > 0));
    options.activity.repliesPending = () => pendingWrites > 0;
  }

  const reply = (header: Uint8Array, event: RequestEvent, data?: Uint8Array) => {
    pendingWrites++;
    return (data ? writer.write(header, data) : writer.write(header)).then(
      () => options.onRequest?.(event),
      () => {
        // The client is gone: the requests it left queued are served for nobody (each a
        // budget grant, a source read, maybe registry GETs), so they are dropped with it.
        stop.abort(new Error("the client is gone (a reply could not be written)"));
        closeQuietly(conn);
      },
    ).finally(() => pendingWrites--);
  };

  const serveRead = async (header: Uint8Array, offset: number, length: number) => {
    const event: RequestEvent = { type: NBD_CMD_READ, offset, length, error: 0 };
    let buf: Uint8Array;
    try {
      buf = allocateReply(NBD_REPLY_BYTES + length); // zeroed: the part past the end stays 0
    } catch (cause) {
      // Out of memory although within budget: fail this READ, keep the server.
      event.error = NBD_ENOMEM;
      event.cause = cause;
      setError(header, NBD_ENOMEM);
      return reply(header, event);
    }
    buf.set(header);
    const receivedMs = fillTraceEnabled ? performance.now() : 0;
    const inRange = Math.max(0, Math.min(length, source.size - offset));
    let reading: Promise<void> | undefined;
    sourceReads++;
    try {
      if (inRange > 0) {
        const dest = buf.subarray(NBD_REPLY_BYTES, NBD_REPLY_BYTES + inRange);
        reading = source.readInto
          ? source.readInto(offset, dest, stop.signal)
          : source.read(offset, inRange, stop.signal).then((bytes) => dest.set(bytes));
        // Sources that ignore the signal must not hold a closing connection open.
        await abortable(reading, stop.signal);
      }
    } catch (cause) {
      if (stop.signal.aborted) {
        // The source may go on writing `buf` (a fetch other reads share): its bytes stay in
        // the budget until it is done; when the pool has no room, this connection keeps them.
        if (!reading) return;
        if (account.keepUntil(length, reading)) return KEPT_IN_POOL;
        await reading.catch(() => {});
        return;
      }
      event.error = NBD_EIO;
      event.cause = cause;
      setError(header, NBD_EIO);
      return reply(header, event);
    } finally {
      sourceReads--;
      options.activity?.touch(); // the idle clock starts when the server is done
    }
    await reply(buf, event);
    // A diagnostic (EROFS_OCI_FILL_TRACE): how long each READ took the server, with its reply.
    if (fillTraceEnabled) {
      fillTrace("nbd-read", offset, length, (performance.now() - receivedMs).toFixed(2));
    }
  };

  let end: TransmissionEnd | undefined;
  try {
    while (!stop.signal.aborted) {
      while (inFlight >= maxInFlight) {
        await new Promise<void>((resolve) => slotFreed = resolve);
      }
      readingRequest = true;
      const more = await reader.fill(NBD_REQUEST_BYTES, "a request");
      readingRequest = false;
      if (!more) {
        end = { reason: "eof", requests };
        break;
      }
      const at = reader.start;
      const view = reader.view;
      if (view.getUint32(at) !== NBD_REQUEST_MAGIC) {
        end = {
          reason: "protocol",
          requests,
          detail: `bad request magic 0x${view.getUint32(at).toString(16)}`,
        };
        break;
      }
      const type = view.getUint16(at + 6);
      const offsetBig = view.getBigUint64(at + 16);
      const length = view.getUint32(at + 24);
      // The reply header, with the cookie copied before the buffer is reused.
      const header = new Uint8Array(NBD_REPLY_BYTES);
      const headerView = new DataView(header.buffer);
      headerView.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
      header.set(reader.buf.subarray(at + 8, at + 16), 8);
      reader.start += NBD_REQUEST_BYTES;
      requests++;
      // Offsets beyond 2^53 lie past any real export: zero-fill them like any read past the end.
      const offset = offsetBig > MAX_SAFE_OFFSET ? Number.MAX_SAFE_INTEGER : Number(offsetBig);
      const event: RequestEvent = { type, offset, length, error: 0 };

      if (type === NBD_CMD_READ) {
        if (
          length > maxRequestBytes ||
          (options.exportBytes !== undefined &&
            offsetBig + BigInt(length) > BigInt(options.exportBytes))
        ) {
          event.error = NBD_EINVAL;
          setError(header, NBD_EINVAL);
          track(reply(header, event), 0);
        } else {
          waitingForBudget = true;
          try {
            await acquireWhileClientStays(length);
          } finally {
            waitingForBudget = false;
          }
          track(serveRead(header, offset, length), length);
        }
      } else if (type === NBD_CMD_WRITE) {
        // The payload follows the request whatever we answer: consume it to stay in sync.
        skippingPayload = true;
        await reader.skip(length, "a WRITE payload");
        skippingPayload = false;
        event.error = NBD_EPERM;
        setError(header, NBD_EPERM);
        track(reply(header, event), 0);
      } else if (type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES) {
        event.error = NBD_EPERM;
        setError(header, NBD_EPERM);
        track(reply(header, event), 0);
      } else if (type === NBD_CMD_FLUSH) {
        track(reply(header, event), 0); // nothing is ever dirty
      } else if (type === NBD_CMD_DISC) {
        end = { reason: "disconnect", requests };
        break;
      } else {
        event.error = NBD_EINVAL;
        setError(header, NBD_EINVAL);
        track(reply(header, event), 0);
      }
    }
  } catch (error) {
    if (error instanceof UnexpectedEof) {
      end = { reason: "protocol", requests, detail: error.message };
    } else {
      end = {
        reason: "closed",
        requests,
        detail: error instanceof Error ? error.message : String(error),
      };
    }
  }
  if (stop.signal.aborted) end = { reason: "aborted", requests, detail: reasonText(stop.signal) };
  end ??= { reason: "aborted", requests };

  // After DISC (or EOF) the requests already received still get their replies; after a
  // protocol error or an abort nothing more is sent.
  if (end.reason === "protocol" || end.reason === "aborted" || end.reason === "closed") {
    stop.abort(new Error(`connection ended: ${end.reason}`));
  }
  await Promise.allSettled(running);
  await writer.drain();
  if (!options.budget) account.close();
  options.signal?.removeEventListener("abort", onAbort);
  closeQuietly(conn);
  return end;

  /**
   * The budget for a READ, watching the socket meanwhile: a client that has left with READs
   * queued would otherwise keep its slot (its end unseen while nothing reads the socket) and,
   * once granted, have each READ served for nobody — every dead client in turn holding the
   * budget's bytes and reading the source.
   */
  async function acquireWhileClientStays(length: number): Promise<void> {
    if (account.tryAcquire(length)) return;
    // One reaction on the grant for the whole wait: a Promise.race per read ahead left one on
    // the pending grant per read (~300 B for each byte a trickling client sent meanwhile).
    let settled = false;
    let wake: (() => void) | undefined;
    const granted = account.acquire(length, stop.signal);
    granted.then(() => {}, () => {}).finally(() => {
      settled = true;
      wake?.();
    });
    /** Until the grant is settled, or `ahead` (if given) has something to say. */
    const next = (ahead?: Promise<"data" | "eof" | "full">) =>
      new Promise<"data" | "eof" | "full" | undefined>((resolve, reject) => {
        wake = () => resolve(undefined);
        if (settled) resolve(undefined);
        ahead?.then(resolve, reject);
      }).finally(() => wake = undefined);
    for (;;) {
      const seen = await next(reader.readAhead());
      if (settled) return await granted;
      if (seen === "eof" && !disconnectQueued(reader)) {
        stop.abort(new Error("the client is gone (it left with READs waiting for the budget)"));
        closeQuietly(conn);
        return await granted; // rejects: the stop ends the connection
      }
      if (seen !== "data") {
        await next();
        return await granted;
      }
    }
  }

  function track(work: Promise<unknown>, bytes: number): void {
    inFlight++;
    let held = bytes;
    const done: Promise<void> = work.then((outcome) => {
      if (outcome === KEPT_IN_POOL) held = 0; // the budget's now, until the source is done
    }, (error) => {
      // A bug, not the client's: drop the connection rather than leave a request unanswered.
      stop.abort(error);
      closeQuietly(conn);
    }).finally(() => {
      inFlight--;
      account.release(held);
      running.delete(done);
      const wake = slotFreed;
      slotFreed = undefined;
      wake?.();
    });
    running.add(done);
  }
}

/**
 * True when the requests buffered but not yet handled include a DISC: a client that sent it
 * and closed its side still gets the replies it was owed (an orderly end), not a dropped queue.
 */
function disconnectQueued(reader: BufferedReader): boolean {
  let at = reader.start;
  while (at + NBD_REQUEST_BYTES <= reader.end) {
    if (reader.view.getUint32(at) !== NBD_REQUEST_MAGIC) return false;
    const type = reader.view.getUint16(at + 6);
    if (type === NBD_CMD_DISC) return true;
    at += NBD_REQUEST_BYTES + (type === NBD_CMD_WRITE ? reader.view.getUint32(at + 24) : 0);
  }
  return false;
}

function setError(header: Uint8Array, errno: number): void {
  new DataView(header.buffer, header.byteOffset).setUint32(4, errno);
}

function reasonText(signal: AbortSignal): string | undefined {
  const reason = signal.reason;
  if (reason === undefined) return undefined;
  return reason instanceof Error ? reason.message : String(reason);
}

function closeQuietly(conn: NbdConn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}
