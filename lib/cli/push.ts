import type { Command } from "./command.ts";
import { parseCommandArgs } from "./command.ts";
import { openRegistry, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { ProgressLine } from "./progress.ts";
import { info } from "../log.ts";
import { UsageError } from "../errors.ts";
import { pushImage, type PushProgress } from "../convert/push_image.ts";
import { catchInterrupts } from "./interrupt.ts";

export const pushCommand: Command = {
  name: "push",
  summary: "upload EROFS images as the layers of a one-platform OCI image",
  help: `Usage: erofs-oci push IMAGE FILE... [options]

Uploads each FILE (an EROFS image; checked for the EROFS magic) as a layer of an OCI
image manifest tagged IMAGE, bottom layer first, with media type application/vnd.erofs
and a config naming the platform. Blobs the registry already has are not uploaded
again; files above 8 MiB go up in 8 MiB chunks. Prints the manifest digest.

Options:
  -h, --help

${
    REGISTRY_OPTIONS_HELP.replace(
      "to pick from a multi-platform image",
      "recorded in the image config",
    )
  }

Example:
  erofs-oci push localhost:5000/app:v1 base.erofs app.erofs`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("push", argv, { ...REGISTRY_OPTIONS });
    if (positionals.length < 2) {
      throw new UsageError(
        positionals.length === 0 ? "push: missing IMAGE FILE..." : "push: missing FILE...",
        "usage: erofs-oci push IMAGE FILE... [options]",
      );
    }
    const [image, ...files] = positionals;
    const { ref, client, platform } = await openRegistry("push", image, values);
    // A signal stops the upload under way and cancels its session on the registry (else its
    // bytes stay in the registry's upload area); the command then says so and exits 130/129.
    const interrupt = catchInterrupts(`push interrupted: ${image} was not pushed completely`);
    let progress: ProgressLine | undefined;
    let current = "";
    const onProgress = (event: PushProgress) => {
      interrupt.signal.throwIfAborted(); // hashing a large file: no request to abort
      const label = `${event.phase === "hash" ? "hashing" : "uploading"} ${event.path}`;
      if (label !== current) {
        progress?.finish();
        progress = new ProgressLine(label);
        current = label;
      }
      progress!.update(event.doneBytes, event.totalBytes);
    };
    try {
      const result = await pushImage(client, ref, files.map((path) => ({ path })), {
        platform,
        onProgress,
        signal: interrupt.signal,
      });
      progress?.finish();
      const said = new Set<string>();
      for (const layer of result.layers) {
        // A file given twice is one blob: uploaded (or found) once, said so once.
        const how = said.has(layer.digest)
          ? "same as above"
          : layer.uploaded
          ? "uploaded"
          : "exists  ";
        said.add(layer.digest);
        info(`${how} ${layer.digest} ${layer.path}`);
      }
      console.log(`${result.reference}@${result.manifestDigest}`);
      return 0;
    } finally {
      interrupt.close();
      progress?.finish();
      client.close();
    }
  },
};
