/** Making text from registries, images and files safe to print on a terminal; human sizes. */

/** Lower-case hex of `bytes`, two characters per byte (digests, UUIDs, names). */
export function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Characters a terminal may act on instead of showing: C0 controls (ESC starts escape sequences,
 * CR and BS overwrite what was printed), DEL, C1 controls (U+009B is an 8-bit CSI) and the bidi
 * embeddings/overrides/isolates that reorder a line (Trojan Source).
 */
// deno-lint-ignore no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

function escapeCharacter(c: string): string {
  const code = c.charCodeAt(0);
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
}

/**
 * Text from a registry, image or file made safe for a terminal: every control character is
 * shown as `\xNN` (`\u{NNNN}` for bidi controls).
 *
 * @example
 * printable("evil\x1b[2Jtype") // "evil\\x1b[2Jtype"
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, escapeCharacter);
}

/**
 * JSON.stringify, with the characters it leaves raw that a terminal would still act on (DEL, C1
 * and bidi controls) written as `\uXXXX` escapes: the same JSON value, safe to print.
 */
export function printableJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(
    /[\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * A value from a registry, image or file for one line of a message: printable, and cut after
 * `maxChars` (a 3 MiB annotation made a 3 MiB error line).
 */
export function clipped(text: string, maxChars = 100): string {
  return printable(text.length > maxChars ? `${text.slice(0, maxChars)}…` : text);
}

/** The longest message line printed whole without --debug (hostile values make longer ones). */
export const MAX_MESSAGE_CHARS = 4000;

/** How much of a cut message's end is kept: where a system error puts its reason. */
const KEPT_END_CHARS = 200;

/**
 * `text` cut to MAX_MESSAGE_CHARS, saying how much was left out: its beginning and its end are
 * kept, the middle goes. The end says why ("open <a 4,200-character path>: File name too long"
 * lost its reason when the tail was cut).
 */
export function capped(text: string): string {
  if (text.length <= MAX_MESSAGE_CHARS) return text;
  const head = MAX_MESSAGE_CHARS - KEPT_END_CHARS;
  return `${text.slice(0, head)}… (${
    text.length - MAX_MESSAGE_CHARS
  } characters left out; --debug shows all) …${text.slice(-KEPT_END_CHARS)}`;
}

/** 1536 → "1.5 KiB". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * "layer 3", "layers 0, 2, 5–9": runs of consecutive indexes as ranges, at most `maxParts`
 * parts, then how many more (a 20,000-layer image named each one in a 129,052-character line).
 */
export function layerList(indexes: number[], maxParts = 8): string {
  if (indexes.length === 0) return "no layers";
  const parts: string[] = [];
  let shown = 0;
  for (let i = 0; i < indexes.length && parts.length < maxParts;) {
    let j = i;
    while (j + 1 < indexes.length && indexes[j + 1] === indexes[j] + 1) j++;
    parts.push(j === i ? `${indexes[i]}` : `${indexes[i]}–${indexes[j]}`);
    shown += j - i + 1;
    i = j + 1;
  }
  const more = indexes.length - shown;
  return `layer${indexes.length === 1 ? "" : "s"} ${parts.join(", ")}${
    more > 0 ? ` and ${more} more` : ""
  }`;
}

/** "1 blob", "2 blobs": a count with its noun (plural by an "s"). */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}
