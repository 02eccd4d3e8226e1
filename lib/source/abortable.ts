/**
 * `promise`, or a rejection with `signal.reason` as soon as `signal` aborts. The work behind
 * `promise` goes on (it may be shared with other waiters); only this wait ends. `late` is given
 * the value should the abandoned work still finish, to release what it holds.
 */
export function abortable<T>(
  promise: Promise<T>,
  signal?: AbortSignal,
  late?: (value: T) => void,
): Promise<T> {
  if (!signal) return promise;
  const abandon = () => {
    if (late) promise.then(late, () => {});
    return signal.reason;
  };
  if (signal.aborted) return Promise.reject(abandon());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abandon());
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
