import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { parseSize } from "./size.ts";
import { debug, info, isDebug } from "./log.ts";
import { formatBytes } from "./table.ts";
import { checkErofsSuperblock, EROFS_SUPER_END } from "../erofs/superblock.ts";
import { CachedSource, DEFAULT_CACHE_BYTES } from "../source/cached.ts";
import { LocalFile } from "../source/local_file.ts";
import type { Source } from "../source/source.ts";
import { parseListenAddress, startNbdServer } from "../nbd/listen.ts";
import { READ_ONLY_EXPORT_FLAGS } from "../nbd/protocol.ts";
import { commandName } from "../nbd/protocol.ts";
import { FormatError, UserError } from "../errors.ts";

export const serveCommand: Command = {
  name: "serve",
  summary: "export an EROFS image read-only over NBD (unix socket or TCP)",
  help: `Usage: erofs-oci serve IMAGE --listen ADDR [options]

Serves IMAGE (a local EROFS file) to NBD clients such as nbdcopy, nbdinfo, nbdfuse,
qemu or nbd-client. Every client gets its own connection; all share one read cache.
Prints the NBD URI on stdout, then runs until SIGINT or SIGTERM.

Options:
  --listen ADDR        unix:PATH or tcp:HOST:PORT (tcp:127.0.0.1:10809, tcp:[::1]:0)
  --cache-size SIZE    read cache bound, e.g. 256M (default ${formatBytes(DEFAULT_CACHE_BYTES)})
  --export-name NAME   name shown by \`nbdinfo --list\` (default: the file name);
                       clients may also ask for the default export ""
  -h, --help

Example:
  erofs-oci serve app.erofs --listen unix:/tmp/app.sock &
  nbdinfo 'nbd+unix:///?socket=/tmp/app.sock'`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("serve", argv, {
      listen: { type: "string" },
      "cache-size": { type: "string" },
      "export-name": { type: "string" },
    });
    const [image] = expectPositionals("serve", positionals, ["IMAGE"]);
    if (!values.listen) {
      throw new UserError("serve: --listen is required", "e.g. --listen unix:/tmp/erofs.sock", {
        exitCode: 2,
      });
    }
    const listen = parseListenAddress(values.listen);
    const cacheBytes = values["cache-size"] !== undefined
      ? parseSize(values["cache-size"], "--cache-size")
      : DEFAULT_CACHE_BYTES;
    const exportName = values["export-name"] ?? image.split("/").pop()!;

    const raw = await openImage(image);
    let cache: CachedSource;
    try {
      await checkImage(raw, image);
      cache = new CachedSource(raw, { cacheBytes });
    } catch (error) {
      await raw.close?.();
      if (error instanceof RangeError) {
        throw new UserError(`serve: --cache-size: ${error.message}`, undefined, { exitCode: 2 });
      }
      throw error;
    }

    let stopRequested!: () => void;
    const stopped = new Promise<void>((resolve) => stopRequested = resolve);
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    for (const signal of signals) Deno.addSignalListener(signal, stopRequested);

    try {
      const server = await startNbdServer({
        listen,
        source: cache,
        export: {
          name: exportName,
          sizeBytes: cache.size,
          flags: READ_ONLY_EXPORT_FLAGS,
          description: `erofs-oci ${image}`,
        },
        onConnection: (event) => debug("nbd connection", event),
        onRequest: isDebug()
          ? (e) => {
            if (e.error) {
              debug(
                `${commandName(e.type)} ${e.offset}+${e.length} → errno ${e.error}`,
                e.cause ?? "",
              );
            }
          }
          : undefined,
      });
      console.log(server.uri);
      info(`serving ${image} (${formatBytes(cache.size)}) at ${server.uri}; Ctrl-C stops`);
      await stopped;
      await server.close();
      debug("cache stats", cache.stats());
    } finally {
      for (const signal of signals) Deno.removeSignalListener(signal, stopRequested);
      await cache.close();
    }
    return 0;
  },
};

async function openImage(image: string): Promise<Source> {
  // TODO(oci): accept registry references through lib/cli/registry_options.ts + RegistryBlob
  // once the OCI client lands; until then IMAGE is a local file.
  try {
    return await LocalFile.open(image);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UserError(`serve: ${image}: no such file`);
    }
    if (error instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`serve: ${image}: permission denied`);
    }
    throw error;
  }
}

/** Refuses anything that is not EROFS before a client sees it. */
async function checkImage(source: Source, image: string): Promise<void> {
  if (source.size < EROFS_SUPER_END) {
    throw new FormatError(`not an EROFS image: ${image} has only ${source.size} bytes`);
  }
  checkErofsSuperblock(await source.read(0, EROFS_SUPER_END), image);
}
