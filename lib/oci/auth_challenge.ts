/**
 * `WWW-Authenticate` parsing (RFC 7235 §4.1, §2.1): a comma-separated list of challenges, each a
 * scheme followed by either a token68 or `name=value` parameters (token or quoted-string).
 */

/** One challenge: scheme in lower case, parameter names in lower case. */
export interface AuthChallenge {
  scheme: string;
  params: Record<string, string>;
  token68?: string;
}

// RFC 7230 §3.2.6 tchar; token68 adds '/' and trailing '='.
const TCHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;
const TOKEN68_CHAR = /[A-Za-z0-9\-._~+/]/;
/** Registries send a few hundred bytes; anything far longer is not worth parsing. */
const MAX_HEADER_LENGTH = 16 * 1024;

class Cursor {
  pos = 0;
  constructor(readonly text: string) {}
  get done(): boolean {
    return this.pos >= this.text.length;
  }
  peek(offset = 0): string {
    return this.text[this.pos + offset] ?? "";
  }
  skipSpaces(): void {
    while (this.peek() === " " || this.peek() === "\t") this.pos++;
  }
  token(): string {
    const start = this.pos;
    while (!this.done && TCHAR.test(this.peek())) this.pos++;
    return this.text.slice(start, this.pos);
  }
  quoted(): string | undefined {
    if (this.peek() !== '"') return undefined;
    this.pos++;
    let value = "";
    while (!this.done) {
      const c = this.peek();
      this.pos++;
      if (c === '"') return value;
      if (c === "\\" && !this.done) {
        value += this.peek();
        this.pos++;
      } else {
        value += c;
      }
    }
    return undefined; // unterminated
  }
  /** Skips to the next ',' at top level (outside quotes), for error recovery. */
  skipToComma(): void {
    while (!this.done && this.peek() !== ",") {
      if (this.peek() === '"') this.quoted();
      else this.pos++;
    }
  }
}

/** Looks ahead: is the cursor at `token BWS =` (a parameter) rather than a new scheme? */
function atParameter(cursor: Cursor): boolean {
  const save = cursor.pos;
  const name = cursor.token();
  cursor.skipSpaces();
  const isParam = name !== "" && cursor.peek() === "=" && cursor.peek(1) !== "=";
  cursor.pos = save;
  return isParam;
}

function readToken68(cursor: Cursor): string | undefined {
  const save = cursor.pos;
  let value = "";
  while (!cursor.done && TOKEN68_CHAR.test(cursor.peek())) value += cursor.text[cursor.pos++];
  if (value === "") return undefined;
  while (cursor.peek() === "=") value += cursor.text[cursor.pos++];
  cursor.skipSpaces();
  if (cursor.done || cursor.peek() === ",") return value;
  cursor.pos = save;
  return undefined;
}

/**
 * Parses a `WWW-Authenticate` header value into its challenges. Never throws: malformed parts are
 * skipped, so a hostile header yields fewer (or no) challenges rather than an exception.
 *
 * @example
 * parseAuthChallenges('Bearer realm="https://auth.example/token",service="reg"')
 * // [{scheme: "bearer", params: {realm: "https://auth.example/token", service: "reg"}}]
 */
export function parseAuthChallenges(header: string): AuthChallenge[] {
  const challenges: AuthChallenge[] = [];
  if (header.length > MAX_HEADER_LENGTH) return challenges;
  const cursor = new Cursor(header);
  let current: AuthChallenge | undefined;
  while (!cursor.done) {
    cursor.skipSpaces();
    if (cursor.peek() === ",") {
      cursor.pos++;
      continue;
    }
    if (cursor.done) break;
    if (current && atParameter(cursor)) {
      const name = cursor.token().toLowerCase();
      cursor.skipSpaces();
      cursor.pos++; // '='
      cursor.skipSpaces();
      const value = cursor.peek() === '"' ? cursor.quoted() : cursor.token();
      if (value === undefined) break; // unterminated quote: nothing after it is trustworthy
      if (!(name in current.params)) current.params[name] = value;
      cursor.skipSpaces();
      if (!cursor.done && cursor.peek() !== ",") cursor.skipToComma();
      continue;
    }
    const scheme = cursor.token();
    if (scheme === "") {
      cursor.pos++;
      cursor.skipToComma();
      current = undefined;
      continue;
    }
    current = { scheme: scheme.toLowerCase(), params: Object.create(null) };
    challenges.push(current);
    const hadSpace = cursor.peek() === " " || cursor.peek() === "\t";
    cursor.skipSpaces();
    if (hadSpace && !cursor.done && cursor.peek() !== "," && !atParameter(cursor)) {
      const token68 = readToken68(cursor);
      if (token68 !== undefined) current.token68 = token68;
      else cursor.skipToComma();
    } else if (!hadSpace && !cursor.done && cursor.peek() !== ",") {
      cursor.skipToComma();
    }
  }
  for (const c of challenges) c.params = { ...c.params };
  return challenges;
}

/** Parameters of a Bearer challenge (distribution token auth spec). */
export interface BearerChallenge {
  realm: string;
  service?: string;
  scope?: string;
}

/**
 * The first usable Bearer challenge: its realm must be an absolute http(s) URL. Returns undefined
 * when there is none.
 */
export function findBearerChallenge(challenges: AuthChallenge[]): BearerChallenge | undefined {
  for (const c of challenges) {
    if (c.scheme !== "bearer") continue;
    const realm = c.params.realm;
    if (!realm) continue;
    try {
      const url = new URL(realm);
      if (url.protocol !== "https:" && url.protocol !== "http:") continue;
    } catch {
      continue;
    }
    const bearer: BearerChallenge = { realm };
    if (c.params.service !== undefined) bearer.service = c.params.service;
    if (c.params.scope !== undefined) bearer.scope = c.params.scope;
    return bearer;
  }
  return undefined;
}
