/**
 * Why a reattach failed, for its outcome line. A registry that refuses the credentials the
 * mount recorded (rotated since): it says how to give the current ones.
 */
export function failureDetail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  if (!/rejected .*credentials \((401|403)\)/.test(message)) return message;
  return `${message}: give the current ones, e.g. \`echo "$TOKEN" | erofs-oci reattach DIR ` +
    "--username USER --password-stdin`";
}
