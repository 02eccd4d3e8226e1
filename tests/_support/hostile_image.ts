/**
 * An EROFS image that tries to hand out privileges (a setuid-root `id`, a /dev/null node) and
 * the checks that it does not: for the mount hardening tests on the host and in the VM.
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";

export const NOBODY = "65534";

/** An EROFS image holding a root-owned 4755 copy of `id` and a `c 1 3` (/dev/null) node. */
export async function buildHostileImage(dir: string): Promise<string> {
  const tree = `${dir}/tree`;
  Deno.mkdirSync(tree);
  Deno.copyFileSync("/usr/bin/id", `${tree}/id`);
  Deno.chmodSync(`${tree}/id`, 0o4755);
  const mknod = await new Deno.Command("mknod", { args: [`${tree}/null`, "c", "1", "3"] })
    .output();
  assert.equal(mknod.code, 0, new TextDecoder().decode(mknod.stderr));
  const image = `${dir}/hostile.erofs`;
  const mkfs = await new Deno.Command(`${PEER_BIN}/mkfs.erofs`, {
    args: [image, tree],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(mkfs.code, 0, new TextDecoder().decode(mkfs.stderr));
  Deno.removeSync(tree, { recursive: true });
  return image;
}

/** `id -u` printed by the image's setuid `id`, run as nobody. */
export async function euidOfSetuidId(dir: string): Promise<string> {
  const out = await new Deno.Command("setpriv", {
    args: [
      `--reuid=${NOBODY}`,
      `--regid=${NOBODY}`,
      "--clear-groups",
      `${dir}/id`,
      "-u",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

export function canOpenDevice(file: string): boolean {
  try {
    Deno.openSync(file, { write: true }).close();
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied) return false;
    throw error;
  }
}

/** Per-mount options (field 6 of mountinfo) of the topmost mount at `mountPoint`. */
export function mountOptionsAt(mountPoint: string): string[] {
  const line = Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
    .filter((l) => l.split(" ")[4] === mountPoint).at(-1);
  assert.ok(line, `${mountPoint} is mounted`);
  return line.split(" ")[5].split(",");
}
