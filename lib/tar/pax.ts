/**
 * POSIX pax extended header records ("pax Extended Header" in the pax spec): each record is
 * `"%d %s=%s\n"`, the decimal length counting the whole record. Values are bytes: xattr values
 * (SCHILY.xattr.*) may hold anything, including NUL and newline.
 */
import { FormatError } from "../errors.ts";

export interface PaxRecord {
  key: string;
  value: Uint8Array;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const lenientUtf8 = new TextDecoder();

/** Longest text decoded by asciiString (Function.apply passes each byte as an argument). */
const ASCII_MAX_BYTES = 1024;

/**
 * `bytes` as a string when they are all ASCII without NUL (their UTF-8 decoding, made in
 * JavaScript: ~2.5x faster than a TextDecoder call for a member's path or a pax key), else
 * undefined.
 */
export function asciiString(bytes: Uint8Array): string | undefined {
  if (bytes.length > ASCII_MAX_BYTES) return undefined;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === 0 || b >= 0x80) return undefined;
  }
  return String.fromCharCode.apply(null, bytes as unknown as number[]);
}

/** A record's value as text, invalid UTF-8 replaced (for numbers: then refused as such). */
const valueText = (value: Uint8Array) => asciiString(value) ?? lenientUtf8.decode(value);

/** Parses a pax header body in order (order matters for GNU sparse 0.0 offset/numbytes pairs). */
export function parsePaxRecords(data: Uint8Array, offset: number): PaxRecord[] {
  const records: PaxRecord[] = [];
  let pos = 0;
  // GNU tar pads the header body with NULs up to the block; trailing NULs end the records.
  while (pos < data.length && data[pos] !== 0) {
    let length = 0;
    let i = pos;
    for (; i < data.length && data[i] >= 0x30 && data[i] <= 0x39 && i - pos < 16; i++) {
      length = length * 10 + (data[i] - 0x30);
    }
    if (i === pos || data[i] !== 0x20 || length <= i - pos + 1 || pos + length > data.length) {
      throw new FormatError(`tar pax header at byte ${offset}: malformed record length`);
    }
    const record = data.subarray(i + 1, pos + length);
    if (record[record.length - 1] !== 0x0a) {
      throw new FormatError(`tar pax header at byte ${offset}: record does not end in newline`);
    }
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new FormatError(`tar pax header at byte ${offset}: record without key`);
    const keyBytes = record.subarray(0, eq);
    let key = asciiString(keyBytes);
    if (key === undefined) {
      try {
        key = utf8.decode(keyBytes);
      } catch {
        throw new FormatError(`tar pax header at byte ${offset}: key is not UTF-8`);
      }
    }
    records.push({ key, value: record.subarray(eq + 1, record.length - 1) });
    pos += length;
  }
  return records;
}

/** Decimal integer value (pax `size`, `uid`, …). */
export function paxInteger(record: PaxRecord, offset: number): number {
  const text = valueText(record.value);
  if (!/^[0-9]{1,16}$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new FormatError(`tar pax header at byte ${offset}: bad ${record.key} "${text}"`);
  }
  return Number(text);
}

/**
 * pax time: `[-]seconds[.fraction]`. A negative time with a fraction means seconds + fraction
 * below zero, so it is returned as floor seconds plus a positive nanosecond part.
 */
export function paxTime(record: PaxRecord, offset: number): { sec: number; nsec: number } {
  const text = valueText(record.value);
  const m = /^(-?)([0-9]{1,16})(?:\.([0-9]*))?$/.exec(text);
  if (!m || !Number.isSafeInteger(Number(m[2]))) {
    throw new FormatError(`tar pax header at byte ${offset}: bad ${record.key} "${text}"`);
  }
  let sec = Number(m[2]);
  let nsec = Number((m[3] ?? "").slice(0, 9).padEnd(9, "0"));
  if (m[1] === "-") {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1;
      nsec = 1_000_000_000 - nsec;
    }
  }
  return { sec, nsec };
}
