/**
 * Why a reattach failed, for its outcome line, with the error's hint (where the failed
 * server's log was kept, the limit to raise). A registry that refuses the credentials the
 * mount recorded (rotated since): it says how to give the current ones instead (the hint of
 * a layer that cannot be read, to try again later, would not help).
 */
export function failureDetail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  if (/rejected .*credentials \((401|403)\)/.test(message)) {
    return `${message}: give the current ones, e.g. \`echo "$TOKEN" | erofs-oci reattach DIR ` +
      "--username USER --password-stdin`";
  }
  const hint = (error as { hint?: unknown } | undefined)?.hint;
  return typeof hint === "string" && hint !== "" ? `${message}: ${hint}` : message;
}
