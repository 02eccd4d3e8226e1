/**
 * One macrotask turn of Deno's event loop: I/O is polled (sockets, FUSE/NBD replies, timers
 * due) before the promise resolves. A MessageChannel message, not node:timers' setImmediate or
 * a zero timer: the first use of a Node module boots Deno's Node layer (~22 ms on the host,
 * 1.2-1.5 s in the QEMU TCG guest), and a zero timer took 2-3 ms per turn (Deno 2.9). A fresh
 * channel per turn (~26 µs), closed when its message came: an open port would keep the
 * process alive.
 */
export function eventLoopTurn(): Promise<void> {
  const { port1, port2 } = new MessageChannel();
  return new Promise((resolve) => {
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
    port2.close();
  });
}
