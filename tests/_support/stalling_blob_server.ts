/**
 * A registry stand-in on loopback whose first, unranged GET sends the blob's first 1000 bytes
 * and then nothing (the connection held open until `release()`); a ranged GET `bytes=N-` gets
 * the rest at once. `ranges`: the Range header of every request ("" for none), in order.
 */
export function serveStallingBlob(blob: Uint8Array) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const ranges: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const range = req.headers.get("range");
    ranges.push(range ?? "");
    if (range) {
      const from = Number(/^bytes=(\d+)-$/.exec(range)![1]);
      return new Response(blob.slice(from), {
        status: 206,
        headers: { "content-range": `bytes ${from}-${blob.length - 1}/${blob.length}` },
      });
    }
    return new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(blob.slice(0, 1000));
          await released; // then nothing more, connection open
          controller.close();
        },
      }),
      { headers: { "content-length": String(blob.length) } },
    );
  });
  return { host: `127.0.0.1:${server.addr.port}`, ranges, release, server };
}
