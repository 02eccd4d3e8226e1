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
  const parts: string[] = [];
  for (const part of raw.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return parts.join("/");
}
