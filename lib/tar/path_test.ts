import { equal } from "node:assert/strict";
import { normalizeTarPath } from "./path.ts";

/** The rule written out plainly (normalizeTarPath skips the work for paths already normal). */
function reference(raw: string): string {
  const parts: string[] = [];
  for (const part of raw.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return parts.join("/");
}

Deno.test("normalizeTarPath: every path of up to 6 pieces from '/', '.', '..', names", () => {
  const pieces = ["a", "/", ".", "..", ".b", "c.", "..."];
  let count = 0;
  const visit = (path: string, depth: number) => {
    equal(normalizeTarPath(path), reference(path), JSON.stringify(path));
    count++;
    if (depth > 0) { for (const piece of pieces) visit(path + piece, depth - 1); }
  };
  visit("", 6);
  equal(count, 137_257);
});
