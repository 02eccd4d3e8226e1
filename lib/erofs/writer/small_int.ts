/**
 * Integer helpers of the writer's plans: results kept small integers (V8's unboxed ones) where
 * they fit, as the plans' columns and objects hold hundreds of thousands of them.
 */

/** `n` rounded up to a multiple of `to`, as a small integer when it is one (smallInt). */
export function alignUp(n: number, to: number): number {
  return smallInt(Math.ceil(n / to) * to);
}

/**
 * `n` (an integer) as a small integer when it is one: a division or Math.ceil yields a double
 * even when integral, and a field that once held a double keeps every object's value boxed
 * (100,000 entries: ~10 MB of heap numbers across offset, nid, sizes, mtimes).
 */
export function smallInt(n: number): number {
  return n >= -0x80000000 && n <= 0x7fffffff ? n | 0 : n;
}
