import { printable } from "../text.ts";
import type { Command } from "./command.ts";
import {
  expectPositionals,
  parseBlobDigest,
  parseCommandArgs,
  parseLayerIndex,
} from "./command.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { ProgressLine } from "./progress.ts";
import { UsageError } from "../errors.ts";
import { checkOutputFile, outputFileError } from "./output_file.ts";
import { catchInterrupts } from "./interrupt.ts";
import { selectLayers } from "../oci/layers.ts";

/** Parses `--layer N` (a non-negative integer); usage error otherwise. */
export const pullCommand: Command = {
  name: "pull",
  writesWhere: "-o",
  summary: "download one layer blob to a file, verified against its digest",
  help: `Usage: erofs-oci pull IMAGE (--layer N | --blob DIGEST) -o FILE [options]

Downloads one layer of IMAGE (a registry reference or oci:PATH[:TAG]) to FILE and checks
it against its sha256 digest. The data goes to FILE.RANDOM.partial first and is renamed only once
verified; nothing is left behind on failure. Progress is shown on stderr when it is a terminal.

Options:
  -o, --output FILE     where to write the layer (required)
      --layer N         layer index, 0 = bottom (see \`erofs-oci inspect\`)
      --blob DIGEST     layer by digest, sha256:...
      --any-media-type  accept a layer that is not application/vnd.erofs
${REGISTRY_OPTIONS_HELP}
  -h, --help

Example:
  erofs-oci pull localhost:5000/app:v1 --layer 0 -o app.erofs`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("pull", argv, {
      ...REGISTRY_OPTIONS,
      output: { type: "string", short: "o" },
      layer: { type: "string" },
      blob: { type: "string" },
      "any-media-type": { type: "boolean" },
    });
    const [image] = expectPositionals("pull", positionals, ["IMAGE"]);
    if (!values.output) throw new UsageError("pull: -o FILE (--output) is required");
    const layer = parseLayerIndex("pull", values.layer);
    if ((layer === undefined) === (values.blob === undefined)) {
      throw new UsageError(
        "pull: give exactly one of --layer N or --blob DIGEST",
        "list the layers with `erofs-oci inspect IMAGE`",
      );
    }
    parseBlobDigest("pull", values.blob);
    const output = values.output;
    checkOutputFile("pull", output);
    const opened = await openImage("pull", image, values);
    try {
      const resolved = await opened.resolve();
      const [chosen] = selectLayers(resolved, {
        layer,
        blob: values.blob,
        anyMediaType: values["any-media-type"],
      });
      const progress = new ProgressLine(`pulling ${chosen.digest.slice(0, 19)}…`);
      // Ctrl-C aborts the download, which removes the partial file (it stayed when Ctrl-C ended us).
      const interrupt = catchInterrupts(`pull interrupted: nothing written to ${output}`);
      try {
        await opened.store.downloadBlob(opened.repository, chosen.digest, output, {
          expectedSizeBytes: chosen.sizeBytes,
          onProgress: (done, total) => progress.update(done, total),
          signal: interrupt.signal,
        });
      } catch (error) {
        if (interrupt.signal.aborted) throw interrupt.signal.reason;
        throw outputFileError("pull", output, error);
      } finally {
        interrupt.close();
        progress.finish();
      }
      console.log(
        `${printable(output)}: layer ${chosen.index} ${chosen.digest} (${chosen.sizeBytes} bytes)`,
      );
      return 0;
    } finally {
      opened.close();
    }
  },
};
