/**
 * An HTTP/1.1 server on a raw loopback socket, for replies Deno's own server will not send (a
 * transfer coding it sets itself, a body that never comes): each request's head is answered
 * with the bytes `answer` gives; with `closeAfter`, the connection is closed after one answer,
 * else the next request on it is read (and a body left unsent stalls the client).
 */
export function startRawHttpServer(
  answer: (requestHead: string) => Uint8Array[],
  { closeAfter = false }: { closeAfter?: boolean } = {},
): { host: string } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const serveConn = async (conn: Deno.Conn) => {
    open.add(conn);
    const buffer = new Uint8Array(65536);
    try {
      for (;;) {
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await conn.read(buffer);
          if (n === null) return;
          head += new TextDecoder().decode(buffer.subarray(0, n));
        }
        for (const part of answer(head)) await conn.write(part);
        if (closeAfter) return;
      }
    } catch {
      /* the client went away */
    } finally {
      open.delete(conn);
      conn.close();
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) serveConn(conn);
  })().catch(() => {});
  return {
    host: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const conn of open) {
        try {
          conn.close();
        } catch { /* closed meanwhile */ }
      }
      await accepting;
    },
  };
}
