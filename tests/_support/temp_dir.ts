/**
 * A temporary directory for the length of one test body: always removed afterwards. A failed
 * removal fails a passing test (something was left mounted or busy below it) but never hides the
 * body's own error.
 */
export async function withTempDir<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  let passed = false;
  try {
    const result = await fn(dir);
    passed = true;
    return result;
  } finally {
    const removed = Deno.remove(dir, { recursive: true });
    await (passed ? removed : removed.catch(() => {}));
  }
}
