import type { Command } from "./command.ts";
import {
  expectPositionals,
  parseBuildTimestamp,
  parseCommandArgs,
  parseLayerIndex,
} from "./command.ts";
import { ProgressLine } from "./progress.ts";
import { catchInterrupts } from "./interrupt.ts";
import { info, warn } from "../log.ts";
import { UsageError, UserError } from "../errors.ts";
import { FileRefusedError, readRegularFile } from "../../ffi/files.ts";
import {
  openFileNoSymlinks,
  realPathTrusted,
  UntrustedSymlinkError,
} from "../../ffi/path_resolve.ts";
import { buildImage } from "../erofs/writer/build_image.ts";
import { parseUuid } from "../erofs/writer/format.ts";
import { formatBytes } from "./table.ts";
import { checkOutputFile, dirOf } from "./output_file.ts";
import type { OpenedRegistry } from "../oci/opened.ts";
import {
  REGISTRY_OPTIONS,
  REGISTRY_OPTIONS_HELP,
  type RegistryOptionValues,
} from "./registry_option_specs.ts";
import { isImageSource, loadSource } from "./build_source.ts";

const MAX_ORDER_FILE_BYTES = 64 << 20;

export const buildCommand: Command = {
  name: "build",
  writesWhere: "-o",
  summary: "make an EROFS image from a directory, laid out for lazy mounting",
  help: `Usage: erofs-oci build SOURCE -o OUT.erofs [options]

Writes an uncompressed EROFS image (4096-byte blocks) of SOURCE. All
metadata (inodes, directories, xattrs) is packed at the front of the image, before any
file data, so a lazy mount reads the whole tree in one ranged read. SOURCE is a
directory, or a tar (plain, gzip or zstd) file, or - for a tar on standard input. OCI
whiteouts in a tar (.wh.NAME, .wh..wh..opq) become what overlayfs understands (a 0/0
character device, trusted.overlay.opaque=y), so the image works as one layer of a stack. OUT is written
through a temporary file next to it and replaced only when complete.

SOURCE may also be an image (a registry reference such as 127.0.0.1:5000/app:v1, or
oci:PATH[:TAG]) with tar layers: its layers are streamed, verified against their digests
and merged with their whiteouts applied, as a container sees them (--platform picks from
an index); --layer N takes that one layer as it is instead.

Options:
  -o, --output FILE     the image to write (required)
      --order FILE      access list, one path per line (relative to SOURCE, taken as
                        written; lines starting with # are comments): those files'
                        data comes first and contiguous, the rest follows in directory
                        order
      --timestamp SECS  build time in the superblock (default: SOURCE_DATE_EPOCH or now);
                        with --uuid the output is the same for the same input
      --uuid UUID       file system UUID (default: random)
      --inline-max N    a file's last partial block of at most N bytes (default 2048,
                        0..4095) is stored with its inode instead of in a block of its
                        own: smaller images; 0 keeps the metadata prefix smallest
      --literal-whiteouts  keep .wh.* tar members as plain files
      --layer N         image SOURCE: only layer N (0 = bottom), whiteouts kept
      --push REF        then push the image as the one layer of REF (a registry
                        reference; media type application/vnd.erofs)
      --tar-index       write only metadata (512-byte blocks) whose files point into
                        the uncompressed tar as a second device, laid out as
                        \`mkfs.erofs --tar=i\` does: mount with the tar appended to
                        the image, or the tar as extra device (-o device=)
${
    REGISTRY_OPTIONS_HELP.replace(
      "to pick from a multi-platform image\n                        (default: this host)",
      "to pick from a multi-platform image SOURCE\n                        (default: this host); recorded with --push",
    )
  }
  -h, --help

Example:
  erofs-oci build ./rootfs -o app.erofs --timestamp 0 --uuid 00000000-0000-4000-8000-000000000001`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("build", argv, {
      output: { type: "string", short: "o" },
      order: { type: "string" },
      timestamp: { type: "string" },
      uuid: { type: "string" },
      "literal-whiteouts": { type: "boolean" },
      "tar-index": { type: "boolean" },
      push: { type: "string" },
      "inline-max": { type: "string" },
      layer: { type: "string" },
      ...REGISTRY_OPTIONS,
    });
    const [source] = expectPositionals("build", positionals, ["SOURCE"]);
    if (!values.output) throw new UsageError("build: -o FILE (--output) is required");
    checkOutputFile("build", values.output, [source]);
    // It waited, silent, for a tar typed in.
    if (source === "-" && Deno.stdin.isTerminal()) {
      throw new UsageError(
        "build: SOURCE - reads a tar from standard input, which is a terminal",
        "pipe one in, e.g. tar -C DIR -c . | erofs-oci build - -o image.erofs",
      );
    }
    const timestamp = parseBuildTimestamp("build", values.timestamp) ??
      Math.floor(Date.now() / 1000);
    let uuid: Uint8Array | undefined;
    if (values.uuid !== undefined) {
      uuid = parseUuid(values.uuid);
      if (!uuid) throw new UsageError(`build: --uuid wants xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`);
    }
    const order = values.order ? await readOrderFile(values.order) : undefined;
    let inlineMax: number | undefined;
    if (values["inline-max"] !== undefined) {
      inlineMax = Number(values["inline-max"]);
      if (!/^[0-9]{1,4}$/.test(values["inline-max"]) || inlineMax > 4095) {
        throw new UsageError("build: --inline-max wants a byte count from 0 to 4095");
      }
    }
    if (source === "-" && values["password-stdin"]) {
      throw new UsageError("build: SOURCE - and --password-stdin both want standard input");
    }
    if (values.push && values["tar-index"]) {
      throw new UsageError(
        "build: --push with --tar-index would push an image without its data",
        "push the tar-index image together with its tar layer by other means",
      );
    }
    // Registry problems (bad reference, credentials) surface before the work, not after.
    // The registry client, image reader and pusher are loaded only when used: a build from a
    // directory starts faster without them.
    const registry = values.push
      ? await (await import("./registry_options.ts")).openRegistry("build", values.push, values)
      : undefined;

    const fromImage = isImageSource(source);
    const layer = parseLayerIndex("build", values.layer);
    if (layer !== undefined && !fromImage) {
      throw new UsageError("build: --layer N applies to an image SOURCE (REF or oci:PATH)");
    }
    // Taken without a word, and nothing done with them (a user's --platform was not recorded).
    const registryOption = Object.keys(REGISTRY_OPTIONS).find((name) =>
      (values as Record<string, unknown>)[name] !== undefined
    );
    if (registryOption && !fromImage && !values.push) {
      throw new UsageError(
        `build: --${registryOption} applies to an image SOURCE (REF or oci:PATH) or with --push`,
      );
    }
    if (fromImage && values["tar-index"]) {
      throw new UsageError("build: --tar-index needs a tar SOURCE, not an image");
    }
    try {
      await buildFrom(source, values.output, {
        // Explicit credentials serve --push when given (stdin is read once), else the image;
        // how to reach registries (--plain-http, --insecure) serves both.
        image: fromImage
          ? {
            registry: values.push
              ? {
                platform: values.platform,
                "plain-http": values["plain-http"],
                insecure: values.insecure,
              }
              : values,
            layer,
          }
          : undefined,
        literalWhiteouts: values["literal-whiteouts"],
        tarIndex: values["tar-index"],
        buildTimeSec: timestamp,
        uuid,
        order,
        inlineMax,
      });
      if (registry) await pushBuilt(registry, values.output);
    } finally {
      registry?.client.close();
    }
    return 0;
  },
};

async function buildFrom(
  source: string,
  output: string,
  options: {
    literalWhiteouts?: boolean;
    tarIndex?: boolean;
    buildTimeSec: number;
    uuid?: Uint8Array;
    order?: string[];
    inlineMax?: number;
    image?: { registry: RegistryOptionValues; layer?: number };
  },
): Promise<void> {
  const loaded = options.image
    ? await (await import("./build_image_source.ts")).loadImageSource(source, dirOf(output), {
      ...options.image,
      impliedMtimeSec: options.buildTimeSec,
    })
    : await loadSource(source, output, {
      literalWhiteouts: options.literalWhiteouts,
      impliedMtimeSec: options.buildTimeSec,
      tarIndex: options.tarIndex,
    });
  const progress = new ProgressLine(`writing ${output}`);
  try {
    const result = buildImage(loaded.root, output, {
      buildTimeSec: options.buildTimeSec,
      uuid: options.uuid,
      order: options.order,
      inlineTailMaxBytes: options.inlineMax,
      tarIndex: loaded.tarBlocks === undefined ? undefined : { tarBlocks: loaded.tarBlocks },
      onProgress: (done, total) => progress.update(done, total),
    });
    progress.finish();
    const unmatched = result.orderUnmatched;
    if (unmatched.length > 0) {
      warn(
        `${unmatched.length} --order path(s) name no regular file in SOURCE, e.g. ` +
          JSON.stringify(unmatched[0]),
      );
    }
    info(
      `${output}: ${formatBytes(result.sizeBytes)}, ${loaded.entries + 1} entries, ` +
        `${result.inodes} inodes, metadata ${formatBytes(result.metadataBytes)} at the front`,
    );
  } finally {
    progress.finish();
    loaded.close();
  }
}

/** Pushes the image as the one layer of `registry.ref` and prints reference@digest. */
async function pushBuilt(registry: OpenedRegistry, image: string): Promise<void> {
  const progress = new ProgressLine(`uploading ${image}`);
  // A signal stops the upload under way and cancels its session on the registry (else its
  // bytes stay in the registry's upload area); the command then says so and exits 130/129.
  const interrupt = catchInterrupts(
    `build interrupted: ${image} was built, its push not completed`,
  );
  try {
    const { pushImage } = await import("../convert/push_image.ts");
    const result = await pushImage(registry.client, registry.ref, [{ path: image }], {
      platform: registry.platform,
      signal: interrupt.signal,
      onProgress: (event) => {
        interrupt.signal.throwIfAborted(); // hashing a large file: no request to abort
        if (event.phase !== "hash") progress.update(event.doneBytes, event.totalBytes);
      },
    });
    progress.finish();
    console.log(`${result.reference}@${result.manifestDigest}`);
  } finally {
    interrupt.close();
    progress.finish();
  }
}

/**
 * The --order file's paths: each line as it is (names may start or end with blanks), a CR
 * before the newline dropped; empty lines and lines starting with `#` are left out (`./#x`
 * names a file `#x`).
 */
async function readOrderFile(path: string): Promise<string[]> {
  let text: string;
  try {
    // Resolved as root reads every file it is given: another user's symlink is not followed
    // (a user's link to /etc/shadow had its first line printed in the "names no file" warning).
    text = new TextDecoder().decode(
      await readRegularFile(realPathTrusted(path), MAX_ORDER_FILE_BYTES, "build: --order file", {
        open: openFileNoSymlinks,
      }),
    );
  } catch (error) {
    if (error instanceof FileRefusedError || error instanceof UntrustedSymlinkError) throw error;
    throw new UserError(`build: cannot read --order file ${path}: ${(error as Error).message}`);
  }
  return text.split("\n").map((line) => line.replace(/\r$/, "")).filter((line) =>
    line && !line.startsWith("#")
  );
}
