/**
 * Test helper for FUSE blobs and the mounts stacked on them: remembers every mount in order
 * and tears everything down in reverse (EROFS/overlay before the FUSE blob under it), falling
 * back to lazy unmounts so a failing test never leaves mounts behind.
 *
 * Rule for tests in this process: the FUSE server runs on this thread, so only async file
 * APIs and `Deno.Command(...).output()` may touch the mounts — a sync call would deadlock.
 */
import { type FuseBlob, type FuseBlobOptions, startFuseBlob } from "../../lib/fuse/blob.ts";
import {
  type ErofsMountInfo,
  mountErofsFile,
  type MountErofsOptions,
  unmountErofs,
} from "../../lib/mount/erofs_file.ts";
import { readMountInfo } from "../../lib/sys/mountinfo.ts";
import { umountOffThread } from "../../lib/sys/mount_task.ts";
import { mountOverlay, type OverlayOptions } from "../../lib/mount/overlay.ts";
import type { Source } from "../../lib/source/source.ts";
import { LocalFile } from "../../lib/source/local_file.ts";
import { FIXTURES } from "./requires.ts";

const MNT_DETACH = 2;

type Layer = { kind: "fs"; target: string } | { kind: "blob"; blob: FuseBlob };

export class FuseStack {
  readonly root: string;
  #layers: Layer[] = [];

  private constructor(root: string) {
    this.root = root;
  }

  static async create(): Promise<FuseStack> {
    return new FuseStack(await Deno.makeTempDir({ prefix: "erofs-oci-fuse-test-" }));
  }

  /** A new empty directory under the test root. */
  async dir(name: string): Promise<string> {
    const path = `${this.root}/${name}`;
    await Deno.mkdir(path, { recursive: true });
    return path;
  }

  async blob(source: Source, name: string, opts?: FuseBlobOptions): Promise<FuseBlob> {
    const blob = await deadline(
      startFuseBlob(source, `${this.root}/${name}`, opts),
      "startFuseBlob",
    );
    this.#layers.push({ kind: "blob", blob });
    return blob;
  }

  async erofs(file: string, name: string, opts?: MountErofsOptions): Promise<ErofsMountInfo> {
    const target = await this.dir(name);
    const info = await deadline(mountErofsFile(file, target, opts), "mountErofsFile");
    this.#layers.push({ kind: "fs", target });
    return info;
  }

  async overlay(name: string, lowerTopFirst: string[], opts?: OverlayOptions): Promise<string> {
    const target = await this.dir(name);
    await deadline(mountOverlay(target, lowerTopFirst, opts), "mountOverlay");
    this.#layers.push({ kind: "fs", target });
    return target;
  }

  /** Forgets the topmost entry after a test unmounted it itself. */
  forgetTop(): void {
    this.#layers.pop();
  }

  /** Mounts (of any kind) under the test root, from mountinfo. */
  mounts(): string[] {
    return readMountInfo().map((m) => m.mountPoint).filter((p) => p.startsWith(this.root));
  }

  /** Unmounts everything in reverse order, lazily when needed, and removes the test root. */
  async cleanup(): Promise<void> {
    const problems: string[] = [];
    for (const layer of this.#layers.reverse()) {
      if (layer.kind === "fs") {
        try {
          await unmountErofs(layer.target);
        } catch (error) {
          problems.push(`${layer.target}: ${(error as Error).message}`);
          await umountOffThread(layer.target, MNT_DETACH);
        }
      } else {
        try {
          await deadline(layer.blob.close(), "FuseBlob.close");
        } catch (error) {
          problems.push(`${layer.blob.mountDir}: ${(error as Error).message}`);
          await umountOffThread(layer.blob.mountDir, MNT_DETACH);
        }
      }
    }
    this.#layers = [];
    const left = this.mounts();
    for (const mountPoint of left.reverse()) await umountOffThread(mountPoint, MNT_DETACH);
    if (left.length === 0) await Deno.remove(this.root, { recursive: true }).catch(() => {});
    if (problems.length || left.length) {
      throw new Error(`teardown: ${[...problems, ...left.map((m) => `left ${m}`)].join("; ")}`);
    }
  }
}

/**
 * Runs `body` with a fresh stack and a list of sources to close; tears the stack down, then
 * closes the sources (also when the teardown fails).
 */
export async function withFuseStack(
  body: (stack: FuseStack, sources: Source[]) => Promise<void>,
): Promise<void> {
  const stack = await FuseStack.create();
  const sources: Source[] = [];
  try {
    await body(stack, sources);
  } finally {
    try {
      await stack.cleanup();
    } finally {
      for (const source of sources) await source.close?.();
    }
  }
}

/** Opens a local file as a Source and adds it to `sources` (closed by withFuseStack). */
export async function openTracked(sources: Source[], file: string): Promise<LocalFile> {
  const source = await LocalFile.open(file);
  sources.push(source);
  return source;
}

/**
 * The fixtures' layer1-3.erofs, each mounted from its own FUSE blob, under a read-only overlay
 * (layer3 on top): the merged directory.
 */
export async function overlayOfFixtureLayers(stack: FuseStack, sources: Source[]): Promise<string> {
  const lowers = [];
  for (const i of [1, 2, 3]) {
    const blob = await stack.blob(
      await openTracked(sources, `${FIXTURES}/layer${i}.erofs`),
      `fuse-${i}`,
    );
    await stack.erofs(blob.filePath, `l${i}`);
    lowers.unshift(`${stack.root}/l${i}`);
  }
  return await stack.overlay("merged", lowers);
}

/** Rejects when `promise` takes longer than `ms` (a hang becomes a named failure). */
export function deadline<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took more than ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** `manifest.py DIR` output (see its docstring), run as a child so FUSE keeps being served. */
export async function manifest(dir: string, ...flags: string[]): Promise<string> {
  const out = await deadline(
    new Deno.Command("python3", {
      args: [`${FIXTURES}/manifest.py`, ...flags, dir],
      stdout: "piped",
      stderr: "piped",
    }).output(),
    `manifest.py ${dir}`,
    60_000,
  );
  if (!out.success) throw new Error(`manifest.py failed: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

export function expected(name: string): Promise<string> {
  return Deno.readTextFile(`${FIXTURES}/expected/${name}`);
}

/** A Source over bytes in memory. */
export function bytesSource(bytes: Uint8Array): Source {
  return {
    size: bytes.length,
    read: (offset, length) => Promise.resolve(bytes.slice(offset, offset + length)),
  };
}

/** sha256 hex of bytes. */
export async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}
