/**
 * Why a reattach failed, for its outcome line. A registry that refuses the credentials the
 * mount recorded (rotated since): reattach has no others to offer, so it says what does help.
 */
export function failureDetail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  if (!/rejected .*credentials \((401|403)\)/.test(message)) return message;
  return `${message}: reattach uses the credentials the mount was given; umount it and mount ` +
    "it again with the current ones";
}
