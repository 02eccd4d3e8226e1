/**
 * JSON from outside (registries, images, index files): V8's parser holds about 100 bytes per
 * open level, so a few MiB of `[[[[…` took hundreds of MB before any check of the result could
 * refuse it. Documents we read nest a handful of levels; deeper ones are refused before parsing.
 */
export const MAX_JSON_DEPTH = 64;

/**
 * JSON.parse after a scan that refuses nesting deeper than `maxDepth` (a SyntaxError). Typed as
 * JSON.parse is, so that it replaces it as it stands: callers check the shape they get.
 */
// deno-lint-ignore no-explicit-any
export function parseJson(text: string, maxDepth = MAX_JSON_DEPTH): any {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // the escaped character, whatever it is
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) throw new SyntaxError(`JSON nested deeper than ${maxDepth} levels`);
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return JSON.parse(text);
}

/**
 * "not JSON" and where, for an error parseJson threw: V8's message quotes the text it stopped
 * at, and what is not yet checked may be bytes no one should see (a layout's index.json that is
 * another user's link to a file of root's).
 */
export function notJsonBecause(error: unknown): string {
  const message = error instanceof Error ? error.message : "";
  if (message.startsWith("JSON nested deeper")) return `not JSON (${message})`;
  const at = /position (\d+)/.exec(message)?.[1];
  return at === undefined ? "not JSON" : `not JSON (at character ${at})`;
}
