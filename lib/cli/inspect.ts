import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { printable, printableJson, printTable } from "./table.ts";
import { isErofsMediaType } from "../oci/media_types.ts";

export const inspectCommand: Command = {
  name: "inspect",
  summary: "show an image's platforms, manifest digest and layers",
  help: `Usage: erofs-oci inspect IMAGE [options]

Shows the platforms of IMAGE, the digest of the chosen platform's manifest and its
layers (index, digest, size in bytes, media type), bottom layer first. Layer indexes are
what \`pull --layer\` and \`mount --layer\` take.

IMAGE is [registry[:port]/]name[:tag][@sha256:DIGEST] (no registry means Docker Hub), or
oci:PATH[:TAG] for a local OCI image layout directory.

Options:
      --json            print one JSON document instead of the table
${REGISTRY_OPTIONS_HELP}
  -h, --help

Examples:
  erofs-oci inspect localhost:5000/app:v1
  erofs-oci inspect ghcr.io/org/app@sha256:... --platform linux/arm64 --json`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("inspect", argv, {
      ...REGISTRY_OPTIONS,
      json: { type: "boolean" },
    });
    const [image] = expectPositionals("inspect", positionals, ["IMAGE"]);
    const opened = await openImage("inspect", image, values);
    const ref = opened.registry?.ref;
    try {
      const resolved = await opened.resolve();
      if (values.json) {
        const doc = {
          reference: opened.name,
          ...(ref ? { registry: ref.registry, repository: ref.repository } : {}),
          ...(opened.layout ? { layout: opened.layout.ref.layoutPath } : {}),
          ...(ref?.tag !== undefined ? { tag: ref.tag } : {}),
          ...(resolved.indexDigest ? { indexDigest: resolved.indexDigest } : {}),
          manifestDigest: resolved.manifestDigest,
          mediaType: resolved.mediaType,
          platform: resolved.platform,
          platforms: resolved.platforms,
          config: {
            digest: resolved.config.digest,
            size: resolved.config.sizeBytes,
            mediaType: resolved.config.mediaType,
          },
          layers: resolved.layers.map((l) => ({
            index: l.index,
            digest: l.digest,
            size: l.sizeBytes,
            mediaType: l.mediaType,
            erofs: isErofsMediaType(l.mediaType),
          })),
        };
        console.log(printableJson(doc));
        return 0;
      }
      // Platforms come from the registry's documents: escaped like the table cells.
      const lines = [`Image:      ${printable(opened.name)}`];
      if (resolved.indexDigest) lines.push(`Index:      ${resolved.indexDigest}`);
      lines.push(`Manifest:   ${resolved.manifestDigest}`);
      lines.push(`Platform:   ${printable(resolved.platform)}`);
      if (resolved.platforms.length > 1) {
        lines.push(`Platforms:  ${printable(resolved.platforms.join(", "))}`);
      }
      lines.push(`Layers:     ${resolved.layers.length}`, "");
      console.log(lines.join("\n"));
      printTable(
        ["INDEX", "DIGEST", "SIZE", "MEDIA TYPE"],
        resolved.layers.map((l) => [String(l.index), l.digest, String(l.sizeBytes), l.mediaType]),
      );
      return 0;
    } finally {
      opened.close();
    }
  },
};
