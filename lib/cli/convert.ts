import { makeOwnedWorkDir, type OwnedWorkDir } from "../../ffi/work_dir.ts";
import { testHold } from "../test_pause.ts";
import type { Command } from "./command.ts";
import { exitInterrupted, onInterrupt } from "./interrupt.ts";
import { expectPositionals, parseBuildTimestamp, parseCommandArgs } from "./command.ts";
import { ProgressLine } from "./progress.ts";
import { info } from "../log.ts";
import { UsageError, UserError } from "../errors.ts";
import type { OpenedImage } from "../oci/opened.ts";
import {
  openImage,
  openRegistry,
  REGISTRY_OPTIONS,
  REGISTRY_OPTIONS_HELP,
} from "./registry_options.ts";
import { parseLayoutReference } from "../oci/oci_layout.ts";
import { parseReference } from "../oci/reference.ts";
import { convertImage, type ConvertProgress } from "../convert/convert.ts";
import type { ImageDestination } from "../convert/destination.ts";
import { RegistryDestination } from "../convert/destination.ts";
import { cancelOpenUploads } from "../oci/blob_upload.ts";
import { LayoutDestination } from "../convert/layout_destination.ts";
import { layoutSource, registrySource, type SourceImage } from "../convert/source_image.ts";
import { formatBytes } from "./table.ts";
import { parseSize } from "./size.ts";

export const convertCommand: Command = {
  name: "convert",
  writesWhere: "--tmpdir",
  summary: "convert an ordinary image (tar layers) to EROFS layers and push it",
  help: `Usage: erofs-oci convert SRC DST [options]

Pulls SRC (a registry reference or oci:PATH[:TAG]; tar, tar+gzip or tar+zstd layers,
Docker or OCI media types) and writes DST (the same kinds) with one EROFS layer
(application/vnd.erofs) per source layer, or one merged layer with --flatten. Each layer
is streamed from its blob, checked against its digest as it arrives, and written as an
image with its metadata in front; a blob that does not match aborts the conversion. The
config keeps the source's (rootfs.diff_ids and history rewritten to match); the tag is
written last, so a failure leaves no tag on a half-pushed image.

Each EROFS layer records the source digest(s) in the annotation
io.github.erofs-oci.source.layers; layers the image now at DST already holds are reused
instead of converted again. With the same --timestamp the same layer always converts to
the same bytes.

Options:
      --flatten         one layer: all layers merged with their whiteouts applied
      --all-platforms   every platform of an index (DST becomes an index)
      --timestamp SECS  EROFS build time (default: SOURCE_DATE_EPOCH, else the
                        source config's "created", else 0)
      --no-reuse        convert every layer even if DST has it already
      --tmpdir DIR      where layer images are written meanwhile (default: $TMPDIR
                        or /tmp); one layer at a time, plus its file data
      --max-layer-size SIZE  refuse a layer whose uncompressed tar, or the files in
                        it (sparse ones at full size), is larger (e.g. 20G;
                        default: no limit but the disk)
${
    REGISTRY_OPTIONS_HELP.replace(
      "Registry options:",
      "Registry options (--plain-http, --insecure: SRC and DST; credentials: DST only,\n" +
        "SRC uses Docker's config.json):",
    )
  }
  -h, --help

Examples:
  erofs-oci convert docker.io/library/alpine:3.20 127.0.0.1:5000/alpine:3.20-erofs
  erofs-oci convert oci:./debian:12 oci:./debian-erofs:12 --flatten`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("convert", argv, {
      flatten: { type: "boolean" },
      "all-platforms": { type: "boolean" },
      timestamp: { type: "string" },
      "no-reuse": { type: "boolean" },
      tmpdir: { type: "string" },
      "max-layer-size": { type: "string" },
      ...REGISTRY_OPTIONS,
    });
    const [src, dst] = expectPositionals("convert", positionals, ["SRC", "DST"]);
    refuseSameImage(src, dst);
    const maxLayerBytes = values["max-layer-size"] === undefined
      ? undefined
      : parseSize(values["max-layer-size"], "convert: --max-layer-size");
    // 0 refused every layer (elsewhere, as --disk-cache-size 0, it means none).
    if (maxLayerBytes === 0) {
      throw new UsageError(
        "convert: --max-layer-size 0 would refuse every layer",
        "give a size (e.g. 20G), or leave it out for no limit",
      );
    }
    if (values["all-platforms"] && values.platform !== undefined) {
      throw new UsageError("convert: --platform and --all-platforms exclude each other");
    }
    const buildTimeSec = parseBuildTimestamp("convert", values.timestamp);
    // Explicit credentials go to DST only: they must never reach another registry.
    const opened = await openImage("convert", src, {
      platform: values.platform,
      "plain-http": values["plain-http"],
      insecure: values.insecure,
    }, false);
    let destination: ImageDestination;
    let closeDestination = () => {};
    const layoutRef = parseLayoutReference(dst);
    if (layoutRef) destination = new LayoutDestination(layoutRef);
    else {
      const registry = await openRegistry("convert", dst, { ...values, platform: undefined });
      destination = new RegistryDestination(registry.client, registry.ref);
      closeDestination = () => registry.client.close();
    }
    const workDir = makeWorkDir(values.tmpdir);
    // Interrupted: the layer images and spool files in the work dir go, nothing was tagged.
    // A hangup too: a closed terminal or ssh session left the work files behind.
    // The upload under way is cancelled on the registry first (else its bytes stay in the
    // registry's upload area), within a few seconds; a second signal ends it at once.
    const said = "convert interrupted: nothing was tagged, its work files removed";
    let interrupted: Promise<never> | undefined;
    const stopWatching = onInterrupt((signal) => {
      if (interrupted) exitInterrupted(said, signal);
      workDir.remove();
      destination.abandon?.();
      interrupted = cancelOpenUploads().then(() => exitInterrupted(said, signal));
    });
    try {
      await testHold("convert-work-dir");
      const result = await convertImage(sourceOf(opened), destination, {
        platform: values.platform,
        allPlatforms: values["all-platforms"],
        flatten: values.flatten,
        buildTimeSec,
        workDir: workDir.path,
        reuse: !values["no-reuse"],
        maxLayerBytes,
        progress: terminalProgress(),
      });
      for (const platform of result.platforms) {
        const made = platform.layers.filter((l) => !l.reused);
        info(
          `${platform.platform}: ${platform.layers.length} EROFS layer(s), ${made.length} converted ` +
            `(${formatBytes(made.reduce((n, l) => n + l.sizeBytes, 0))}), ` +
            `${platform.layers.length - made.length} reused`,
        );
      }
      console.log(result.reference);
    } catch (error) {
      destination.abandon?.();
      // What the interrupt's clean-up (the work files gone, the session cancelled) made fail:
      // the process ends with the interrupt's line and code instead.
      if (interrupted) await interrupted;
      throw error;
    } finally {
      if (interrupted) await interrupted;
      stopWatching();
      workDir.remove();
      opened.close();
      closeDestination();
    }
    return 0;
  },
};

function sourceOf(opened: OpenedImage): SourceImage {
  if (opened.layout) return layoutSource(opened.name, opened.layout.layout, opened.layout.ref);
  return registrySource(opened.name, opened.registry!.client, opened.registry!.ref);
}

/**
 * Synchronous, so that the caller gives the directory its interrupt clean-up before a signal
 * can be handled (an await between the two could leave it behind). Held for the process's
 * life: what a killed convert left there (kill -9, the OOM killer) the next one removes.
 */
function makeWorkDir(parent: string | undefined): OwnedWorkDir {
  const dir = parent ?? Deno.env.get("TMPDIR") ?? "/tmp";
  try {
    return makeOwnedWorkDir(dir, "erofs-oci-convert-", info);
  } catch (error) {
    throw new UserError(
      `convert: cannot create a work directory in ${dir}: ${(error as Error).message}`,
      "choose another with --tmpdir DIR",
    );
  }
}

function terminalProgress(): ConvertProgress {
  let line: ProgressLine | undefined;
  let label = "";
  return {
    update(next, done, total) {
      if (!line || label !== next) {
        line?.finish();
        line = new ProgressLine(next);
        label = next;
      }
      line.update(done, total);
    },
    finish() {
      line?.finish();
      line = undefined;
      label = "";
    },
    note(message) {
      line?.finish();
      line = undefined;
      info(message);
    },
  };
}

/**
 * Converting an image onto its own name would move the tag to the EROFS image and leave the
 * tar image untagged (and, for `oci:`, unreachable by name in its layout).
 */
function refuseSameImage(src: string, dst: string): void {
  if (!sameImageName(src, dst)) return;
  throw new UsageError(
    `convert: SRC and DST are the same image (${dst}): its tag would move to the converted image`,
    "give DST another tag or repository, e.g. …:TAG-erofs",
  );
}

function sameImageName(src: string, dst: string): boolean {
  const srcLayout = parseLayoutReference(src);
  const dstLayout = parseLayoutReference(dst);
  if (srcLayout || dstLayout) {
    if (!srcLayout || !dstLayout || srcLayout.digest) return false;
    if ((srcLayout.tag ?? "latest") !== (dstLayout.tag ?? "latest")) return false;
    try {
      return Deno.realPathSync(srcLayout.layoutPath) === Deno.realPathSync(dstLayout.layoutPath);
    } catch {
      return false; // a layout that is not there yet is not the source
    }
  }
  try {
    const [a, b] = [parseReference(src), parseReference(dst)];
    return !a.digest && a.registry === b.registry && a.repository === b.repository &&
      (a.tag ?? "latest") === (b.tag ?? "latest");
  } catch {
    return false; // opening them says what is wrong
  }
}
