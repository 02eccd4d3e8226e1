/**
 * Path rule for hostile archives (OCI layers): every member lands inside the root.
 *
 * The path is resolved lexically as if the archive root were "/": leading "/" are dropped,
 * empty and "." components vanish, and ".." removes the previous component or, at the root,
 * is dropped ("clamped"). So "../../etc/passwd" and "/etc/passwd" both become "etc/passwd" and
 * "a/../../b" becomes "b". This is what Docker and containerd get when they join a member name
 * onto "/" and clean it before extracting. Symlinks are never consulted: whoever builds a tree
 * from these paths must not follow symlinks when it creates parents.
 */
export function normalizeTarPath(raw: string): string {
  if (isNormal(raw)) return raw;
  const parts: string[] = [];
  for (const part of raw.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return parts.join("/");
}

/**
 * True when `raw` is its own normal form: no leading or trailing "/", and no "", "." or ".."
 * component (most members' paths, which then need no split and join).
 */
function isNormal(raw: string): boolean {
  const n = raw.length;
  if (n === 0) return true;
  let start = 0; // where the current component starts
  for (let i = 0; i <= n; i++) {
    if (i < n && raw.charCodeAt(i) !== 0x2f) continue;
    const length = i - start;
    if (length === 0) return false;
    if (length <= 2 && raw.charCodeAt(start) === 0x2e) {
      if (length === 1 || raw.charCodeAt(start + 1) === 0x2e) return false;
    }
    start = i + 1;
  }
  return true;
}

/**
 * Bytes of `name` in UTF-8 (lone surrogates count as U+FFFD, as TextEncoder writes them),
 * counted without encoding: the tar reader checks every member's path and names, and an encoded
 * copy each was several short-lived buffers outside the JS heap per member.
 */
export function utf8Length(name: string): number {
  let bytes = 0;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < name.length) {
      const d = name.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}
