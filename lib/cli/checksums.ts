import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { openImage, REGISTRY_OPTIONS, REGISTRY_OPTIONS_HELP } from "./registry_options.ts";
import { ProgressLine } from "./progress.ts";
import { info } from "../log.ts";
import { UsageError } from "../errors.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { makeLayerTable } from "../verify/make_tables.ts";
import { pushTablesArtifact, tableRef, uploadTables } from "../verify/table_artifact.ts";
import { findLayerTableDigests } from "../verify/layer_tables.ts";
import type { RegistryClient } from "../oci/client.ts";
import { fetchManifest } from "../oci/resolve.ts";

export const checksumsCommand: Command = {
  name: "checksums",
  summary: "make chunk-digest tables for an image built by others (verified lazy reads)",
  help: `Usage: erofs-oci checksums IMAGE [--push] [options]

Reads every layer of IMAGE from its registry once, checks it against its digest and makes
its chunk-digest table (sha256 per 1 MiB chunk), which mounts use to verify each byte they
fetch. Without --push the table digests are printed; with --push the tables are stored in
the repository as an artifact referring to the image (referrers API, or the fallback tag
sha256-<hex> for registries without it). An EROFS layer's table also lists where its
directory metadata lies, and its metadata pack (those bytes in one small blob, stored
beside the table) lets a cold mount fetch them with one GET.

Images pushed by erofs-oci (push, build --push, convert) have tables already, bound to each
layer by an annotation in the manifest. Tables made here cannot be: the manifest is someone
else's. They name their layer's digest, which is checked, but a registry that swaps a layer
could swap its table too; mounts say "table not bound by the manifest".

Options:
      --push            store the tables in the registry
${REGISTRY_OPTIONS_HELP}
  -h, --help

Example:
  erofs-oci checksums localhost:5000/app:v1 --push`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("checksums", argv, {
      ...REGISTRY_OPTIONS,
      push: { type: "boolean" },
    });
    const [image] = expectPositionals("checksums", positionals, ["IMAGE"]);
    const opened = await openImage("checksums", image, values);
    try {
      if (!opened.registry) {
        throw new UsageError(
          "checksums: IMAGE must be in a registry",
          "an OCI layout's blobs are verified whole when served",
        );
      }
      const { client, ref } = opened.registry;
      const resolved = await opened.resolve();
      const bound = await findLayerTableDigests(client, ref.repository, resolved.manifestDigest);
      const tables = [];
      for (const layer of resolved.layers) {
        const progress = new ProgressLine(`layer ${layer.index} (${layer.digest.slice(0, 19)}…)`);
        tables.push(
          await makeLayerTable(
            client,
            ref.repository,
            layer,
            (done) => progress.update(done, layer.sizeBytes),
          ),
        );
        progress.finish();
      }
      for (const [i, t] of tables.entries()) {
        const had = bound.get(t.table.layerDigest);
        console.log(
          `layer ${i} ${t.table.layerDigest} table ${t.digest}${
            t.pack ? ` metadata pack ${t.pack.digest} (${t.pack.bytes.length} bytes)` : ""
          }${boundNote(had, t.digest)}`,
        );
      }
      if (values.push && tables.length === 0) {
        info(`${opened.name} has no layers: no chunk-digest table to push`);
      } else if (values.push) {
        await uploadTables(client, ref.repository, tables);
        const { via } = await pushTablesArtifact(client, ref.repository, {
          digest: resolved.manifestDigest,
          size: await manifestSize(client, ref.repository, resolved.manifestDigest),
          mediaType: resolved.mediaType ?? OCI_MANIFEST,
        }, tables.map(tableRef));
        info(
          `pushed ${tables.length} chunk-digest table${
            tables.length === 1 ? "" : "s"
          } for ${opened.name}@${resolved.manifestDigest} (${via})`,
        );
      }
      return 0;
    } finally {
      opened.close();
    }
  },
};

async function manifestSize(
  client: RegistryClient,
  repository: string,
  digest: string,
): Promise<number> {
  return (await fetchManifest(client, repository, digest)).bytes.byteLength;
}

/**
 * What the manifest already says of the layer's table: the same one (pushed again here where
 * the registry lost it), or another one. "(bound one exists)" read as if the registry had it.
 */
function boundNote(had: { digest: string; bound: boolean } | undefined, made: string): string {
  if (!had?.bound) return "";
  return had.digest === made
    ? " (the one the manifest names)"
    : ` (the manifest names another: ${had.digest}; mounts use that one)`;
}
