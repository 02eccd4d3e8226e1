import { plural } from "../text.ts";
import { makeOwnedWorkDir, type OwnedWorkDir } from "../../ffi/work_dir.ts";
import { testHold } from "../test_pause.ts";
import { unlinkIn } from "../../ffi/new_file_in_dir.ts";
import { listDirectory, S_IFDIR, S_IFMT } from "../../ffi/files.ts";
import {
  type MadeDir,
  makeDirTrusted,
  openDirTrusted,
  realPathTrusted,
  statIdentity,
  UntrustedSymlinkError,
} from "../../ffi/path_resolve.ts";
import { LayoutFile } from "../oci/layout_file.ts";
import { closeFd, strerror, SysError } from "../../ffi/libc.ts";
import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs, parseLayerIndex } from "./command.ts";
import { LayerProgress, ProgressLine } from "./progress.ts";
import { info } from "../log.ts";
import { FormatError, refusedSpecialPath, UsageError, UserError } from "../errors.ts";
import { outputFileError } from "./output_file.ts";
import { isGzipMagic } from "../gzip/gzip_header.ts";
import { parseSize } from "./size.ts";
import { MAX_SPAN_BYTES } from "../gzip/zinfo.ts";
import { indexNameFor } from "../gzip/index_record.ts";

/** zstd frame magic 28 B5 2F FD (RFC 8878 section 3.1.1). */
function isZstdMagic(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f &&
    head[3] === 0xfd;
}
import { writeLayerIndex } from "../mount/layer_index_files.ts";
import { LowerDirs } from "../convert/lower_dirs.ts";
import { MARK_IMPLIED, takeImplied } from "../erofs/writer/from_tar.ts";
import { indexImage } from "../mount/index_image.ts";
import { isLocalImage } from "../mount/local_image.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { exitInterrupted, onInterrupt } from "./interrupt.ts";

/** Smallest span accepted: below it the zinfo (32 KiB per checkpoint) outgrows the layer. */
const MIN_SPAN_BYTES = 256 * 1024;

export const indexCommand: Command = {
  name: "index",
  writesWhere: "-o, --tmpdir",
  summary: "index tar/tar.gz layers for lazy mounting (tar-index meta image + gzip zinfo)",
  help: `Usage: erofs-oci index FILE.tar.gz|FILE.tar -o DIR [options]
       erofs-oci index IMAGE [--layer N] (-o DIR | --push) [options]

Reads a tar+gzip layer once (no temporary copy of the tar) and writes to DIR:
  NAME.meta.erofs   EROFS metadata whose files point into the uncompressed tar
                    (the layout of \`mkfs.erofs --tar=i\`)
  NAME.zinfo        gzip checkpoints every span and at every gzip member, the
                    format of \`mkfs.erofs --gzinfo\` (erofs-utils 1.9)
  NAME.pieces       sha256 of every 1 MiB piece of the tar (counted from each
                    checkpoint): a mount checks each piece it inflates
  NAME.index.json   the layer digest and size, diff_id and file digests the
                    index belongs to
A plain (uncompressed) tar needs no zinfo: it gets NAME.meta.erofs, NAME.pieces
(sha256 per 1 MiB of the tar) and NAME.index.json, and mounts straight from the blob.
For FILE, NAME is its name without .tar.gz/.tgz/.gz/.tar; FILE is indexed as an image of
its own (a bottom layer: its whiteouts delete nothing and are left out; a layer of an
image is indexed over the layers below it with IMAGE). For IMAGE (a registry reference
or oci:PATH[:TAG]) every tar and tar+gzip layer (or layer N) is streamed from the registry,
verified against its digest, and NAME is the layer digest (sha256-HEX). zstd layers are
refused (\`erofs-oci convert\` makes EROFS layers).
--push stores the indexes in the registry as one OCI artifact whose subject is the
image manifest (referrers API, or the fallback tag sha256-HEX of the manifest for
registries without it); \`erofs-oci mount IMAGE\` then finds them by itself.
Every gzip member's CRC is checked. Files appear only when complete. An interrupted run
removes the files it wrote; a failed or interrupted one removes -o DIR and the directories
it made above it when it created them and nothing else is left in them.

Options:
  -o, --output DIR      directory for the index files (created if missing)
      --push            store the indexes in IMAGE's registry (IMAGE only); layers that
                        have one pushed already are not indexed again
      --force           with --push: index and push them again all the same
      --layer N         index only layer N (IMAGE only; 0 = bottom)
      --tmpdir DIR      work directory for --push without -o (default: $TMPDIR or /tmp)
      --span SIZE       uncompressed bytes between checkpoints (default 4M, as
                        erofs-utils; 256K to 16M; smaller = cheaper random reads,
                        bigger zinfo)
      --timestamp SECS  build time in the meta image (default: SOURCE_DATE_EPOCH or now)
${REGISTRY_OPTIONS_HELP}
  -h, --help

Examples:
  erofs-oci index layer.tar.gz -o ./index
  erofs-oci index 127.0.0.1:5000/app:v1 --push`,
  async run(argv) {
    const { values, positionals } = parseIndexArgs(argv);
    const [file] = expectPositionals("index", positionals, ["FILE.tar.gz|IMAGE"]);
    if (!values.output && !values.push) {
      throw new UsageError("index: -o DIR (--output) or --push is required");
    }
    if (values.force && !values.push) throw new UsageError("index: --force goes with --push");
    const spanBytes = values.span === undefined
      ? 4 * 1024 * 1024
      : parseSize(values.span, "--span");
    if (spanBytes < MIN_SPAN_BYTES || spanBytes > MAX_SPAN_BYTES) {
      throw new UsageError(
        `index: --span must be ${MIN_SPAN_BYTES} to ${MAX_SPAN_BYTES} bytes`,
      );
    }
    const timestamp =
      parseWhole("--timestamp", values.timestamp ?? Deno.env.get("SOURCE_DATE_EPOCH")) ??
        Math.floor(Date.now() / 1000);
    // -o DIR, made when missing and opened once, here, synchronously, before the interrupt
    // handler that removes what this run made (made later by the indexing, a signal in between
    // left it behind). What an interrupt removes is looked for and removed there, not by path
    // (a user owning a directory on the way could swap it meanwhile: a helper had an
    // interrupted index delete the files of a directory of root's).
    const output = values.output === undefined
      ? undefined
      : openOutputDir(values.output, !outputDirExists(values.output));
    // The directories this run made go with its files (an interrupt), or stay only with an
    // index in them (removeMadeDirs removes empty ones only), through descriptors.
    const removeCreatedOutput = () => {
      if (output) removeMadeDirs(output.made);
    };
    // --push alone: the files go to a directory of ours, removed at the end (or, when the
    // process is killed, by the next index --push in the same place). With -o DIR they are
    // written in a directory of ours inside DIR and moved out together once all are complete:
    // an interrupt removed every new file in DIR (another run's index too) and left a re-index
    // half-replaced (new meta, old record: the old index was lost and the new one refused).
    const tmpdir = values.tmpdir ?? Deno.env.get("TMPDIR") ?? "/tmp";
    let workDir: OwnedWorkDir | undefined;
    try {
      if (values.output !== undefined) {
        // The files end up in DIR, where whoever may change DIR can change them anyway.
        workDir = makeOwnedWorkDir(values.output, STAGING_PREFIX, info, {
          othersMayChangeParent: true,
        });
      } else if (!isLocalImage(file)) {
        workDir = makeOwnedWorkDir(tmpdir, "erofs-oci-index-", info);
      }
    } catch (error) {
      removeCreatedOutput();
      throw outputFileError("index", values.output ?? tmpdir, error);
    }
    const publish = output && workDir
      ? async () => {
        await testHold("index-written");
        publishIndexFiles(workDir!, output.fd, values.output!);
      }
      : undefined;
    // The index is written by a stream pipeline that cannot be stopped half-way in order: at a
    // signal, what this run added (its work directory, a directory it made) goes, then the
    // process. The files are moved to DIR in one synchronous step, which no signal splits.
    const stopWatching = onInterrupt((signal) => {
      workDir?.remove();
      removeCreatedOutput();
      exitInterrupted("index interrupted: the files it had written were removed", signal);
    });
    try {
      if (!output && workDir) await testHold("index-push-dir");
      if (output) await testHold("index-output-dir");
      return await indexInto(file, values, workDir?.path, spanBytes, timestamp, publish);
    } catch (error) {
      workDir?.remove();
      removeCreatedOutput();
      throw error;
    } finally {
      stopWatching();
      workDir?.remove();
      if (output) {
        closeFd(output.fd);
        for (const made of output.made) closeFd(made.parentFd);
      }
    }
  },
};

/** The work directory `index -o DIR` writes in, inside DIR (hidden; swept when left). */
const STAGING_PREFIX = ".erofs-oci-index-";

/**
 * Moves the index files made in `workDir` to -o DIR, each record (NAME.index.json) after the
 * files it names: a reader of DIR never finds a record whose files are not there yet.
 */
function publishIndexFiles(workDir: OwnedWorkDir, outputFd: number, output: string): void {
  const names = listDirectory(workDir.path);
  const isRecord = (name: string) => name.endsWith(".index.json");
  // A directory where a file goes would fail its rename after others were made: refused first,
  // so the files move all or none (a new meta beside the old record was a refused index).
  for (const name of names) {
    let mode: number;
    try {
      mode = statIdentity(outputFd, name).mode;
    } catch {
      continue; // not there yet: the usual case
    }
    if ((mode & S_IFMT) === S_IFDIR) {
      throw new UserError(
        `index: cannot write ${output}/${name}: a directory is there`,
        "remove it or write the index elsewhere",
      );
    }
  }
  try {
    workDir.moveInto(outputFd, [
      ...names.filter((n) => !isRecord(n)),
      ...names.filter(isRecord),
    ], output);
  } catch (error) {
    throw outputFileError("index", output, error);
  }
}

/**
 * -o DIR (made first with `create`: mkdir -p through descriptors), opened as openDirTrusted
 * does (refusals as one line), and the directories this run made on the way, top first. A
 * failure half-way removes those it had made.
 */
function openOutputDir(dir: string, create: boolean): { fd: number; made: MadeDir[] } {
  const made: MadeDir[] = [];
  try {
    return { fd: create ? makeDirTrusted(dir, undefined, made) : openDirTrusted(dir), made };
  } catch (error) {
    removeMadeDirs(made);
    for (const { parentFd } of made) closeFd(parentFd);
    throw outputFileError("index", dir, error);
  }
}

/**
 * Removes the directories this run made for -o DIR (`mkdir -p`: DIR and any missing above it),
 * deepest first, each through the descriptor of the one above it; unlinkat removes one only
 * when empty, so a DIR left holding a complete index stays, and so do those above it.
 */
function removeMadeDirs(made: readonly MadeDir[]): void {
  for (const { parentFd, name } of made.toReversed()) unlinkIn(parentFd, name, true);
}

/** True when `dir` is a directory, false when it is absent; a usage error for anything else. */
function outputDirExists(dir: string): boolean {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(dir);
  } catch (error) {
    // Under /dev, /proc or /sys: refused as every file erofs-oci is given there (the
    // directory is made through descriptors, which Deno's own refusal would not stop).
    const refused = refusedSpecialPath(error);
    if (refused) throw refused;
    return false;
  }
  if (!info.isDirectory) {
    throw new UsageError(
      `index: -o ${dir} is not a directory`,
      "name a directory for the index files",
    );
  }
  return true;
}

/** Indexes `file` (a tar or an image) into `dir` (-o DIR, or ours for --push). */
async function indexInto(
  file: string,
  values: IndexValues,
  dir: string | undefined,
  spanBytes: number,
  timestamp: number,
  publish?: () => Promise<void>,
): Promise<number> {
  if (!isLocalImage(file)) {
    const layer = parseLayerIndex("index", values.layer);
    const image = await openImage("index", file, values);
    const progress = new LayerProgress("indexing");
    try {
      const { files, artifact, alreadyPushed } = await indexImage(image, {
        layer,
        atTopmostCopy: true,
        dir,
        push: values.push ?? false,
        // With -o the files are wanted here whatever the registry has.
        skipPushed: !values.force && values.output === undefined,
        tmpdir: values.tmpdir,
        spanBytes,
        buildTimeSec: timestamp,
        onBytes: (l, doneBytes) => progress.update(l, doneBytes),
        onLayer: (l, done) => {
          progress.finish();
          info(
            `layer ${l.index} ${l.digest}: indexed (${
              done.record.zinfo
                ? plural(done.record.zinfo.checkpoints, "checkpoint")
                : "plain tar, no zinfo"
            })`,
          );
        },
      });
      if (alreadyPushed) {
        console.log(
          `${image.name}: every layer to index has an index pushed already: nothing done ` +
            "(--force makes and pushes them again)",
        );
        return 0;
      }
      await publish?.();
      if (values.output) info(`${files.length} layer index(es) in ${values.output}`);
      if (artifact) {
        console.log(`pushed index ${artifact.digest} for ${image.name} (${artifact.via})`);
      }
      return 0;
    } finally {
      progress.finish();
      image.close();
    }
  }
  if (values.push || values.layer !== undefined) {
    throw new UsageError("index: --push and --layer need an IMAGE, not a file");
  }
  if (dir === undefined) throw new Error("index: no output directory"); // run() gives one
  const name = indexNameFor(file);
  let input: LayoutFile;
  try {
    // A path resolved without other users' symlinks (a user's link to a tar of root's would have
    // its file names and bytes written into world-readable index files), then opened without
    // waiting (a FIFO) and only as a regular file: it is read twice, its head and then whole.
    const real = realPathTrusted(file);
    if (!Deno.lstatSync(real).isFile) {
      throw new UsageError(
        `index: ${file} is not a regular file`,
        "save the layer to a file first",
      );
    }
    input = LayoutFile.open(real, `index: ${file}`, "(save the layer to a file)");
  } catch (error) {
    if (error instanceof UsageError || error instanceof UntrustedSymlinkError) throw error;
    const why = error instanceof SysError ? strerror(error.errno) : (error as Error).message;
    throw new UserError(`index: cannot read ${file}: ${why}`);
  }
  try {
    const head = await input.read(0, Math.min(4, input.size));
    const n = head.length;
    const plainTar = !isGzipMagic(head.subarray(0, n));
    if (plainTar && isZstdMagic(head.subarray(0, n))) {
      throw new FormatError(
        `index: ${file} is zstd-compressed`,
        "only tar and tar+gzip can be indexed; `erofs-oci convert` makes EROFS layers",
      );
    }
    const progress = new ProgressLine(`indexing ${file}`);
    let result;
    try {
      ({ result } = await writeLayerIndex(chunksOf(input), dir, name, {
        spanBytes,
        layerBytes: input.size,
        buildTimeSec: timestamp,
        onEntries: (count) => progress.updateEntries(count),
        plainTar,
        // FILE is indexed as an image of its own, as `mount FILE` shows it (and indexes it with
        // --index-missing): a bottom layer, whose whiteouts and opaque markers delete nothing
        // and are left out (they showed as 0:0 devices and an overlay xattr). A layer of an
        // image is indexed over its layers below: `index IMAGE [--layer N]`.
        impliedMtimeSec: MARK_IMPLIED,
        prepareTree: (root) =>
          new LowerDirs().dropMarkersWithoutLower({ root, implied: takeImplied(root, timestamp) }),
      }));
    } finally {
      progress.finish();
    }
    await publish?.();
    const shown = values.output ?? dir;
    info(
      plainTar
        ? `${shown}/${name}.{meta.erofs,pieces,index.json}: ${result.entries} entries, ` +
          `plain tar (no zinfo), layer ${result.layerDigest}`
        : `${shown}/${name}.{meta.erofs,zinfo,pieces,index.json}: ${result.entries} entries, ` +
          `${result.checkpoints} checkpoints, ${result.members} gzip member(s), layer ${result.layerDigest}`,
    );
    return 0;
  } finally {
    input.close();
  }
}

function parseIndexArgs(argv: string[]) {
  return parseCommandArgs("index", argv, {
    ...REGISTRY_OPTIONS,
    output: { type: "string", short: "o" },
    push: { type: "boolean" },
    force: { type: "boolean" },
    layer: { type: "string" },
    tmpdir: { type: "string" },
    span: { type: "string" },
    timestamp: { type: "string" },
  });
}

type IndexValues = ReturnType<typeof parseIndexArgs>["values"];

function parseWhole(option: string, text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  if (!/^[0-9]{1,15}$/.test(text)) {
    throw new UsageError(`index: ${option} wants a whole number, not '${text}'`);
  }
  return Number(text);
}

/** `file` read from start to end in runs of a MiB (its size as fstat gave it at open). */
function chunksOf(file: LayoutFile): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const length = Math.min(1 << 20, file.size - offset);
      if (length <= 0) return controller.close();
      controller.enqueue(await file.read(offset, length));
      offset += length;
    },
  });
}
