import { waitFor } from "./wait.ts";

/**
 * Text the process writes, as it comes; `wait` resolves at the first output matching `pattern`
 * and fails when the output ends without it, or after `timeoutMs` (waitFor's default: 30 s).
 */
export function collect(stream: ReadableStream<Uint8Array>) {
  let text = "";
  let ended = false;
  const done = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
    ended = true;
    return text;
  })();
  return {
    done,
    wait: async (pattern: RegExp, timeoutMs?: number) => {
      await waitFor(`output matching ${pattern}`, () => pattern.test(text) || ended, timeoutMs);
      if (!pattern.test(text)) throw new Error(`the output ended without ${pattern}:\n${text}`);
    },
  };
}
