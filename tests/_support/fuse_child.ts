/**
 * Child process for the server-death test: serves IMAGE over FUSE at FUSE_DIR, mounts EROFS on
 * it at TARGET, prints "ready" and serves until killed.
 * Usage: deno run -A fuse_child.ts IMAGE FUSE_DIR TARGET
 */
import { startFuseBlob } from "../../lib/fuse/blob.ts";
import { mountErofsFile } from "../../lib/mount/erofs_file.ts";
import { LocalFile } from "../../lib/source/local_file.ts";

const [image, fuseDir, target] = Deno.args;
const blob = await startFuseBlob(await LocalFile.open(image), fuseDir);
await mountErofsFile(blob.filePath, target);
console.log("ready");
// Serve until killed: the test kills us with SIGKILL to play a crashed server.
setInterval(() => {}, 1 << 30);
