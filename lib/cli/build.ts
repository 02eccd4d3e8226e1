import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { ProgressLine } from "./progress.ts";
import { info, warn } from "./log.ts";
import { UsageError, UserError } from "../errors.ts";
import { scanDirectory } from "../erofs/writer/from_dir.ts";
import { buildImage } from "../erofs/writer/build_image.ts";
import { parseUuid } from "../erofs/writer/format.ts";
import { formatBytes } from "./table.ts";

const MAX_ORDER_FILE_BYTES = 64 << 20;

export const buildCommand: Command = {
  name: "build",
  summary: "make an EROFS image from a directory, laid out for lazy mounting",
  help: `Usage: erofs-oci build SOURCE -o OUT.erofs [options]

Writes an uncompressed EROFS image (4096-byte blocks) of SOURCE, a directory. All
metadata (inodes, directories, xattrs) is packed at the front of the image, before any
file data, so a lazy mount reads the whole tree in one ranged read. OUT is written
through a temporary file next to it and replaced only when complete.

Options:
  -o, --output FILE     the image to write (required)
      --order FILE      access list, one path per line (relative to SOURCE): those
                        files' data comes first and contiguous, the rest follows in
                        directory order
      --timestamp SECS  build time in the superblock (default: SOURCE_DATE_EPOCH or now);
                        with --uuid the output is the same for the same input
      --uuid UUID       file system UUID (default: random)
  -h, --help

Example:
  erofs-oci build ./rootfs -o app.erofs --timestamp 0 --uuid 00000000-0000-4000-8000-000000000001`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("build", argv, {
      output: { type: "string", short: "o" },
      order: { type: "string" },
      timestamp: { type: "string" },
      uuid: { type: "string" },
    });
    const [source] = expectPositionals("build", positionals, ["SOURCE"]);
    if (!values.output) throw new UsageError("build: -o FILE (--output) is required");
    const timestamp = parseTimestamp(values.timestamp ?? Deno.env.get("SOURCE_DATE_EPOCH"));
    let uuid: Uint8Array | undefined;
    if (values.uuid !== undefined) {
      uuid = parseUuid(values.uuid);
      if (!uuid) throw new UsageError(`build: --uuid wants xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`);
    }
    const order = values.order ? await readOrderFile(values.order) : undefined;

    let sourceInfo: Deno.FileInfo;
    try {
      sourceInfo = await Deno.stat(source);
    } catch (error) {
      throw new UserError(`build: cannot read ${source}: ${(error as Error).message}`);
    }
    if (!sourceInfo.isDirectory) {
      throw new UserError(`build: ${source} is not a directory`, "SOURCE must be a directory");
    }
    const scanning = new ProgressLine(`scanning ${source}`);
    let skipped = 0;
    const { root, entries } = scanDirectory(source, {
      onEntries: (count) => scanning.update(count),
      onSkippedXattr: (path, name) => {
        if (skipped++ < 5) warn(`xattr ${name} of ${path} cannot be stored in EROFS: left out`);
      },
    });
    scanning.finish();
    if (skipped > 5) warn(`${skipped} xattrs left out in all`);
    const progress = new ProgressLine(`writing ${values.output}`);
    try {
      const result = buildImage(root, values.output, {
        buildTimeSec: timestamp,
        uuid,
        order,
        onProgress: (done, total) => progress.update(done, total),
      });
      progress.finish();
      info(
        `${values.output}: ${formatBytes(result.sizeBytes)}, ${entries + 1} entries, ` +
          `${result.inodes} inodes, metadata ${formatBytes(result.metadataBytes)} at the front`,
      );
      return 0;
    } finally {
      progress.finish();
    }
  },
};

function parseTimestamp(text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  if (!/^-?[0-9]{1,12}$/.test(text)) {
    throw new UsageError(`build: --timestamp wants whole seconds since 1970, not '${text}'`);
  }
  return Number(text);
}

async function readOrderFile(path: string): Promise<string[]> {
  let text: string;
  try {
    const stat = await Deno.stat(path);
    if (stat.size > MAX_ORDER_FILE_BYTES) {
      throw new UserError(`build: --order file ${path} is over 64 MiB`);
    }
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof UserError) throw error;
    throw new UserError(`build: cannot read --order file ${path}: ${(error as Error).message}`);
  }
  return text.split("\n").map((line) => line.trim()).filter((line) =>
    line && !line.startsWith("#")
  );
}
