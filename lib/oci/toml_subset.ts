/**
 * The part of TOML 1.0 (https://toml.io/en/v1.0.0) that containerd's hosts.toml files use:
 * comments, `[table."quoted".key]` headers, `key = value` with dotted keys, basic and literal
 * strings (one line), booleans, decimal integers, arrays (multi-line, nested) and inline
 * tables. Anything else (multi-line strings, dates, floats, arrays of tables) is a FormatError
 * naming the line, never a guess. Tables are null-prototype objects, so a key such as
 * `__proto__` is data, not a prototype change.
 */
import { FormatError } from "../errors.ts";

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

/** Nesting bound for arrays and inline tables: hostile input cannot exhaust the stack. */
const MAX_DEPTH = 32;

function newTable(): TomlTable {
  return Object.create(null) as TomlTable;
}

export function isTomlTable(value: TomlValue | undefined): value is TomlTable {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

class Scanner {
  pos = 0;
  constructor(readonly text: string, readonly name: string) {}

  fail(message: string): never {
    const line = this.text.slice(0, this.pos).split("\n").length;
    throw new FormatError(`${this.name} line ${line}: ${message}`, "see containerd's hosts.md");
  }

  peek(): string {
    return this.text[this.pos] ?? "";
  }

  /** Skips blanks and, with `newlines`, line ends and comments as well. */
  skip(newlines: boolean): void {
    for (;;) {
      const c = this.peek();
      if (c === " " || c === "\t") this.pos++;
      else if (c === "#") {
        while (this.pos < this.text.length && this.peek() !== "\n") this.pos++;
      } else if (newlines && (c === "\n" || c === "\r")) this.pos++;
      else return;
    }
  }

  expect(c: string): void {
    if (this.peek() !== c) this.fail(`expected '${c}'`);
    this.pos++;
  }

  endOfLine(): void {
    this.skip(false);
    const c = this.peek();
    if (c === "\r") this.pos++;
    if (this.pos < this.text.length && this.peek() !== "\n") this.fail("unexpected text");
    this.pos++;
  }

  key(): string[] {
    const parts: string[] = [];
    for (;;) {
      this.skip(false);
      const c = this.peek();
      if (c === '"' || c === "'") parts.push(this.string());
      else {
        const match = /^[A-Za-z0-9_-]+/.exec(this.text.slice(this.pos, this.pos + 256));
        if (!match) this.fail("expected a key");
        parts.push(match[0]);
        this.pos += match[0].length;
      }
      this.skip(false);
      if (this.peek() !== ".") return parts;
      this.pos++;
    }
  }

  string(): string {
    const quote = this.peek();
    if (this.text.startsWith(quote.repeat(3), this.pos)) this.fail("multi-line strings");
    this.pos++;
    let out = "";
    for (;;) {
      const c = this.peek();
      if (c === "" || c === "\n") this.fail("unterminated string");
      this.pos++;
      if (c === quote) return out;
      if (c !== "\\" || quote === "'") {
        out += c;
        continue;
      }
      const e = this.peek();
      this.pos++;
      const simple: Record<string, string> = {
        '"': '"',
        "\\": "\\",
        b: "\b",
        t: "\t",
        n: "\n",
        f: "\f",
        r: "\r",
      };
      if (e in simple) out += simple[e];
      else if (e === "u" || e === "U") {
        const digits = e === "u" ? 4 : 8;
        const hex = this.text.slice(this.pos, this.pos + digits);
        const code = /^[0-9A-Fa-f]+$/.test(hex) && hex.length === digits ? parseInt(hex, 16) : NaN;
        if (!(code <= 0x10ffff) || (code >= 0xd800 && code <= 0xdfff)) {
          this.fail("bad unicode escape");
        }
        out += String.fromCodePoint(code);
        this.pos += digits;
      } else this.fail(`bad escape '\\${e}'`);
    }
  }

  value(depth: number): TomlValue {
    if (depth > MAX_DEPTH) this.fail("nested too deeply");
    this.skip(false);
    const c = this.peek();
    if (c === '"' || c === "'") return this.string();
    if (c === "[") return this.array(depth);
    if (c === "{") return this.inlineTable(depth);
    const match = /^[A-Za-z0-9_+.:-]+/.exec(this.text.slice(this.pos, this.pos + 64));
    if (!match) this.fail("expected a value");
    this.pos += match[0].length;
    const word = match[0];
    if (word === "true") return true;
    if (word === "false") return false;
    if (/^[+-]?(0|[1-9](_?[0-9])*)$/.test(word)) {
      const n = Number(word.replaceAll("_", ""));
      if (Number.isSafeInteger(n)) return n;
    }
    this.fail(`unsupported value '${word}'`);
  }

  array(depth: number): TomlValue[] {
    this.expect("[");
    const items: TomlValue[] = [];
    for (;;) {
      this.skip(true);
      if (this.peek() === "]") break;
      items.push(this.value(depth + 1));
      this.skip(true);
      if (this.peek() === ",") this.pos++;
      else if (this.peek() !== "]") this.fail("expected ',' or ']'");
    }
    this.pos++;
    return items;
  }

  inlineTable(depth: number): TomlTable {
    this.expect("{");
    const table = newTable();
    this.skip(false);
    if (this.peek() === "}") {
      this.pos++;
      return table;
    }
    for (;;) {
      const key = this.key();
      this.expect("=");
      this.assign(table, key, this.value(depth + 1));
      this.skip(false);
      if (this.peek() === "}") break;
      this.expect(",");
    }
    this.pos++;
    return table;
  }

  /** Walks (creating) the tables along `path`; a key that holds a value is a conflict. */
  table(root: TomlTable, path: string[]): TomlTable {
    let table = root;
    for (const part of path) {
      const next = table[part] ?? (table[part] = newTable());
      if (!isTomlTable(next)) this.fail(`key '${part}' is not a table`);
      table = next;
    }
    return table;
  }

  assign(table: TomlTable, key: string[], value: TomlValue): void {
    const parent = this.table(table, key.slice(0, -1));
    const last = key[key.length - 1];
    if (Object.hasOwn(parent, last)) this.fail(`key '${key.join(".")}' defined twice`);
    parent[last] = value;
  }
}

/** Parses `text` (named `name` in errors) into nested tables. */
export function parseTomlSubset(text: string, name: string): TomlTable {
  const s = new Scanner(text, name);
  const root = newTable();
  let current = root;
  for (;;) {
    s.skip(true);
    if (s.pos >= text.length) return root;
    if (s.peek() === "[") {
      s.pos++;
      if (s.peek() === "[") s.fail("arrays of tables");
      const path = s.key();
      s.expect("]");
      current = s.table(root, path);
    } else {
      const key = s.key();
      s.expect("=");
      s.assign(current, key, s.value(0));
    }
    s.endOfLine();
  }
}
