/**
 * Removes `path` and everything under it, now (an interrupt handler's clean-up); true once it
 * is gone. A file made inside meanwhile by an operation already on its way on another thread
 * leaves the directory not empty when it is removed last: another pass removes that too.
 * Never throws.
 */
export function removeTreeSync(path: string, passes = 3): boolean {
  for (let pass = 0; pass < passes; pass++) {
    try {
      Deno.removeSync(path, { recursive: true });
      return true;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return true;
    }
  }
  return false;
}
