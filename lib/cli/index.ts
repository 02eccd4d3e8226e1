import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { ProgressLine } from "./progress.ts";
import { info } from "./log.ts";
import { FormatError, UsageError, UserError } from "../errors.ts";
import { indexGzipLayer } from "../gzip/index_layer.ts";
import { isGzipMagic } from "../gzip/gzip_header.ts";
import { type IndexRecord, sha256Digest } from "../gzip/index_record.ts";

/** Smallest span accepted: below it the zinfo (32 KiB per checkpoint) outgrows the layer. */
const MIN_SPAN_BYTES = 256 * 1024;

export const indexCommand: Command = {
  name: "index",
  summary: "index a tar.gz layer for lazy mounting (tar-index meta image + gzip zinfo)",
  help: `Usage: erofs-oci index FILE.tar.gz -o DIR [options]

Reads a tar+gzip layer once (no temporary copy of the tar) and writes to DIR:
  NAME.meta.erofs   EROFS metadata whose files point into the uncompressed tar
                    (the layout of \`mkfs.erofs --tar=i\`)
  NAME.zinfo        gzip checkpoints every span and at every gzip member, the
                    format of \`mkfs.erofs --gzinfo\` (erofs-utils 1.9)
  NAME.pieces       sha256 of every 1 MiB piece of the tar (counted from each
                    checkpoint): a mount checks each piece it inflates
  NAME.index.json   the layer digest and size, diff_id and file digests the
                    index belongs to
NAME is FILE's name without .tar.gz/.tgz/.gz. Every gzip member's CRC is checked.
Files appear only when complete. A plain tar needs no zinfo:
\`erofs-oci build --tar-index FILE.tar -o NAME.meta.erofs\`.

Options:
  -o, --output DIR      directory for the index files (required; created if missing)
      --span BYTES      uncompressed bytes between checkpoints (default 4194304, as
                        erofs-utils; smaller = cheaper random reads, bigger zinfo)
      --timestamp SECS  build time in the meta image (default: SOURCE_DATE_EPOCH or now)
  -h, --help

Example:
  erofs-oci index layer.tar.gz -o ./index`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("index", argv, {
      output: { type: "string", short: "o" },
      span: { type: "string" },
      timestamp: { type: "string" },
    });
    const [file] = expectPositionals("index", positionals, ["FILE.tar.gz"]);
    if (!values.output) throw new UsageError("index: -o DIR (--output) is required");
    const spanBytes = parseWhole("--span", values.span) ?? 4 * 1024 * 1024;
    if (spanBytes < MIN_SPAN_BYTES) {
      throw new UsageError(`index: --span must be at least ${MIN_SPAN_BYTES} bytes`);
    }
    const timestamp =
      parseWhole("--timestamp", values.timestamp ?? Deno.env.get("SOURCE_DATE_EPOCH")) ??
        Math.floor(Date.now() / 1000);
    const dir = values.output;
    const name = file.replace(/^.*\//, "").replace(/(\.tar\.gz|\.tgz|\.gz)$/, "") || "layer";
    let input: Deno.FsFile;
    try {
      input = await Deno.open(file, { read: true });
    } catch (error) {
      throw new UserError(`index: cannot read ${file}: ${(error as Error).message}`);
    }
    try {
      const head = new Uint8Array(2);
      const n = await input.read(head) ?? 0;
      if (!isGzipMagic(head.subarray(0, n))) {
        throw new FormatError(
          `index: ${file} is not gzip`,
          "a plain tar needs no zinfo: `erofs-oci build --tar-index FILE -o NAME.meta.erofs`",
        );
      }
      await input.seek(0, Deno.SeekMode.Start);
      await Deno.mkdir(dir, { recursive: true });
      const meta = `${dir}/${name}.meta.erofs`, zinfo = `${dir}/${name}.zinfo`;
      const pieces = `${dir}/${name}.pieces`;
      const progress = new ProgressLine(`indexing ${file}`);
      let result;
      try {
        result = await indexGzipLayer(input.readable, { meta, zinfo, pieces }, {
          spanBytes,
          buildTimeSec: timestamp,
          onEntries: (count) => progress.update(count),
        });
      } finally {
        progress.finish();
      }
      const record: IndexRecord = {
        layer: { digest: result.layerDigest, size: result.layerBytes },
        diffId: result.diffId,
        tarBytes: result.tarBytes,
        meta: { file: `${name}.meta.erofs`, digest: sha256Digest(await Deno.readFile(meta)) },
        zinfo: {
          file: `${name}.zinfo`,
          digest: sha256Digest(await Deno.readFile(zinfo)),
          spanBytes: result.spanBytes,
          checkpoints: result.checkpoints,
        },
        pieces: {
          file: `${name}.pieces`,
          digest: sha256Digest(await Deno.readFile(pieces)),
          pieceBytes: result.pieceBytes,
        },
      };
      await Deno.writeTextFile(`${dir}/${name}.index.json`, JSON.stringify(record, null, 2) + "\n");
      info(
        `${dir}/${name}.{meta.erofs,zinfo,pieces,index.json}: ${result.entries} entries, ` +
          `${result.checkpoints} checkpoints, ${result.members} gzip member(s), layer ${result.layerDigest}`,
      );
      return 0;
    } finally {
      try {
        input.close();
      } catch { /* closed by the stream */ }
    }
  },
};

function parseWhole(option: string, text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  if (!/^[0-9]{1,15}$/.test(text)) {
    throw new UsageError(`index: ${option} wants a whole number, not '${text}'`);
  }
  return Number(text);
}
