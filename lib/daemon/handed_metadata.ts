/**
 * The listed directory metadata of a cold mount, fetched by `mount` while its server starts up
 * (the second Deno's start-up is the longest step of a mount; the CLI is idle in it) and handed
 * to the server on stdin after the spec. The bytes are in the disk cache's sidecar format
 * (loadMetadataRanges), and the server checks them like a sidecar read back from disk — all at
 * once against the list's pack digest, else each range against its digest in the chunk table
 * — before it pins them and keeps them there: the hand-over saves the round trip, not the
 * verification. Not fetched when the disk cache is off (the
 * server could not keep them) or already holds a sidecar for the layer (a remount: no GET).
 */
import type { RegistryClient } from "../oci/client.ts";
import { RegistryBlob } from "../oci/registry_blob.ts";
import type { LayerSpec } from "../state/mount_spec.ts";
import { type EarlyTable, loadTable } from "../verify/layer_tables.ts";
import type { ChunkTable } from "../verify/chunk_table.ts";
import type { LayerDescriptor } from "../oci/layers.ts";
import { metadataBytes } from "../verify/metadata_ranges.ts";
import { loadMetadataRanges, type MetadataRangeReader } from "../verify/load_metadata_ranges.ts";
import { sharedDiskCache } from "../mount/layer_source.ts";
import { mark } from "../timing.ts";
import { bodyReader } from "../oci/blob_range.ts";

/** Per layer of a spec: the sidecar bytes handed over, or undefined. */
export type HandedMetadata = (Uint8Array | undefined)[];

/**
 * Listed metadata one mount fetches and hands over, all layers together: each layer's list is
 * bounded (MAX_METADATA_BYTES) but an image's layer count is not, and a hostile one could make
 * the CLI hold 32 MiB per layer. A layer past it gets nothing handed; its server fetches its
 * list itself (bounded by that layer's pin budget).
 */
export const HANDED_METADATA_MAX_BYTES = 64 << 20;

/** What is left of one mount's HANDED_METADATA_MAX_BYTES. */
class HandOverBudget {
  constructor(private left: number) {}

  take(bytes: number): boolean {
    if (bytes > this.left) return false;
    this.left -= bytes;
    return true;
  }

  giveBack(bytes: number): void {
    this.left += bytes;
  }
}

/** A pack GET started from the layer's annotations, before its table was there (budgeted). */
interface EarlyPack {
  digest: string;
  sizeBytes: number;
  bytes: Promise<Uint8Array>;
  abort: AbortController;
}

/** The budget the early fetches of a mount started on, shared with its later fetches. */
const budgets = new WeakMap<EarlyMetadata, HandOverBudget>();

/** True when the disk cache is on (as the server will see it) and holds no sidecar of `digest`. */
function diskCacheWants(digest: string): boolean {
  const cache = sharedDiskCache();
  return cache !== undefined && !cache.hasSidecar(digest);
}

/** What fetchLayerMetadata needs of a layer. */
interface MetadataLayer {
  repository: string;
  digest: string;
  sizeBytes: number;
  mediaType: string;
  layerIndex: number;
}

/**
 * One layer's listed metadata in the sidecar format (undefined when its table has no list or
 * on any failure: the server then fetches the ranges itself, as without the hand-over).
 */
async function fetchLayerMetadata(
  client: RegistryClient,
  layer: MetadataLayer,
  table: ChunkTable,
  budget: HandOverBudget,
  signal?: AbortSignal,
  earlyPack?: EarlyPack,
): Promise<Uint8Array | undefined> {
  const listed = table.metadata ? metadataBytes(table.metadata) : 0;
  // The pack the annotations named is used only when the table names the same one.
  const packTaken = earlyPack !== undefined && earlyPack.digest === table.metadata?.pack &&
    earlyPack.sizeBytes === listed;
  if (earlyPack && !packTaken) {
    earlyPack.abort.abort();
    budget.giveBack(earlyPack.sizeBytes);
  }
  if (!table.metadata || (!packTaken && !budget.take(listed))) return undefined;
  const blob = layerBlob(client, layer);
  const reader: MetadataRangeReader = packTaken
    ? {
      read: (offset, length, signal) => blob.read(offset, length, signal),
      readRanges: (ranges, signal) => blob.readRanges(ranges, signal),
      readPack: (digest, sizeBytes, signal) =>
        digest === earlyPack.digest ? earlyPack.bytes : blob.readPack(digest, sizeBytes, signal),
    }
    : blob;
  let kept: Uint8Array | undefined;
  if (!packTaken) mark(`cli: layer ${layer.layerIndex} metadata GET`);
  // Written only when every range was fetched: a whole sidecar or nothing. Unchecked here:
  // the server checks every range when it reads the sidecar back, before it pins any, and
  // fetches again what does not match (one sha256 pass on the critical path, not two).
  await loadMetadataRanges(table.metadata, reader, {
    sidecar: { read: () => undefined, write: (bytes) => kept = bytes },
    checkedLater: true,
    signal,
  });
  mark(`cli: layer ${layer.layerIndex} metadata fetched`);
  return kept;
}

function layerBlob(client: RegistryClient, layer: MetadataLayer): RegistryBlob {
  return new RegistryBlob(client, layer.repository, {
    index: layer.layerIndex,
    digest: layer.digest,
    sizeBytes: layer.sizeBytes,
    mediaType: layer.mediaType,
  });
}

/**
 * The GET of the pack `table` names in its layer's annotations, started now (budgeted), or
 * undefined. Aborted with `signal`; its bytes are unchecked, like any GET's here.
 */
function startPackGet(
  client: RegistryClient,
  layer: MetadataLayer,
  table: EarlyTable,
  budget: HandOverBudget,
  signal?: AbortSignal,
): EarlyPack | undefined {
  const pack = table.pack;
  if (!pack || !budget.take(pack.sizeBytes)) return undefined;
  const abort = new AbortController();
  signal?.addEventListener("abort", () => abort.abort(), { once: true });
  mark(`cli: layer ${layer.layerIndex} metadata GET`);
  const bytes = layerBlob(client, layer).readPack(pack.digest, pack.sizeBytes, abort.signal);
  bytes.catch(() => {}); // taken (and its failure handled) by loadMetadataRanges, or dropped
  return { ...pack, bytes, abort };
}

/** Per layer digest: the table the fetch follows, and the sidecar bytes (or undefined). */
export type EarlyMetadata = Map<
  string,
  { tableDigest: string; bytes: Promise<Uint8Array | undefined> }
>;

/** What fetchMetadataEarly may be told besides its layers. */
export interface EarlyMetadataOptions {
  signal?: AbortSignal;
  /** Listed bytes handed over for all layers together. Default HANDED_METADATA_MAX_BYTES. */
  maxBytes?: number;
  /**
   * Whether a layer's metadata is wanted: by default, when the host's disk cache has no
   * sidecar for it yet (tests give their own, as that cache is the host's).
   */
  wanted?: (digest: string) => boolean;
}

/**
 * The metadata GETs started as soon as the manifest is known (mount: side by side with its
 * config and the layers' heads), per layer digest; each settles to the sidecar bytes or
 * undefined, never rejects. `tables`: the early table GETs (fetchBoundTables) of `layers`.
 */
export function fetchMetadataEarly(
  client: RegistryClient,
  repository: string,
  tables: Map<string, EarlyTable>,
  layers: LayerDescriptor[],
  options: EarlyMetadataOptions = {},
): EarlyMetadata {
  const { signal, maxBytes = HANDED_METADATA_MAX_BYTES, wanted = diskCacheWants } = options;
  const early: EarlyMetadata = new Map();
  const budget = new HandOverBudget(maxBytes);
  budgets.set(early, budget);
  for (const layer of layers) {
    const table = tables.get(layer.digest);
    if (!table || early.has(layer.digest) || !wanted(layer.digest)) continue;
    const metadataLayer = { ...layer, repository, layerIndex: layer.index };
    // Named by the annotations: fetched side by side with the table, not after it.
    const earlyPack = startPackGet(client, metadataLayer, table, budget, signal);
    early.set(layer.digest, {
      tableDigest: table.digest,
      bytes: table.fetched.then(
        ({ table }) => fetchLayerMetadata(client, metadataLayer, table, budget, signal, earlyPack),
        (error) => {
          earlyPack?.abort.abort();
          throw error;
        },
      ).catch(() => undefined),
    });
  }
  return early;
}

/**
 * Fetches each registry layer's listed metadata (loadMetadataRanges: a few multi-range GETs;
 * the server checks each range) through `client`; undefined for layers without a list, or on
 * any failure (the server then fetches them itself, as without the hand-over). `early`:
 * fetches already started (fetchMetadataEarly), taken for the layers they cover.
 */
export async function fetchMetadataForServer(
  client: RegistryClient,
  layers: LayerSpec[],
  early?: EarlyMetadata,
): Promise<HandedMetadata> {
  const budget = (early && budgets.get(early)) ?? new HandOverBudget(HANDED_METADATA_MAX_BYTES);
  return await Promise.all(layers.map(async (layer) => {
    if (layer.kind !== "registry" || !layer.chunkTable || layer.tarIndex) return undefined;
    const started = early?.get(layer.digest);
    if (started?.tableDigest === layer.chunkTable.digest) return await started.bytes;
    if (!diskCacheWants(layer.digest)) return undefined;
    try {
      return await fetchLayerMetadata(
        client,
        layer,
        await loadTable(layer.chunkTable, layer),
        budget,
      );
    } catch {
      return undefined;
    }
  }));
}

/** The line after the spec on the server's stdin: the byte length per layer that follows. */
interface HandedHeader {
  metadataBytes: number[];
}

/** What goes on the server's stdin after the spec line. */
export function encodeHandedMetadata(metadata: HandedMetadata): Uint8Array[] {
  const header: HandedHeader = { metadataBytes: metadata.map((bytes) => bytes?.length ?? 0) };
  return [
    new TextEncoder().encode(JSON.stringify(header) + "\n"),
    ...metadata.filter((bytes): bytes is Uint8Array => bytes !== undefined && bytes.length > 0),
  ];
}

/** A stream's read size for a line: a spec is a few KiB. */
const LINE_READ_BYTES = 64 << 10;
/** A stream's read size for bytes at most: the server's stdin pipe holds 1-4 MiB. */
const MAX_READ_BYTES = 4 << 20;

/**
 * Bytes of a stream read on demand: lines, then exact lengths. A byte stream (stdin) is read
 * into buffers as large as what is wanted, so the listed metadata already in the pipe comes in
 * one read instead of 35 of 64 KiB (each an event-loop turn of a server busy attaching: under
 * TCG they took 0.9-1.8 s after the CLI had written them).
 */
/**
 * What the server reads its stdin through: Deno.stdin's own read(), not its `readable`. The
 * first web stream of a process costs its start-up 5-6 ms on the host and 0.37 s under QEMU TCG
 * (the VM benchmark's server, between its reader thread's start and the spec), all before the
 * spec is read.
 */
export interface ByteReader {
  read(into: Uint8Array): Promise<number | null>;
}

class StreamBytes {
  #reader: ReadableStreamDefaultReader<Uint8Array> | ReadableStreamBYOBReader | ByteReader;
  #buffered: Uint8Array[] = [];
  #bufferedBytes = 0;
  #done = false;

  constructor(input: ReadableStream<Uint8Array> | ByteReader) {
    this.#reader = input instanceof ReadableStream ? bodyReader(input) : input;
  }

  async #read(wantedBytes: number): Promise<Uint8Array | undefined> {
    const reader = this.#reader;
    const buffer = () =>
      new Uint8Array(Math.min(MAX_READ_BYTES, Math.max(LINE_READ_BYTES, wantedBytes)));
    if (reader instanceof ReadableStreamDefaultReader) return (await reader.read()).value;
    if (reader instanceof ReadableStreamBYOBReader) return (await reader.read(buffer())).value;
    const into = buffer();
    const n = await reader.read(into);
    return n === null ? undefined : into.subarray(0, n);
  }

  async #more(wantedBytes = LINE_READ_BYTES): Promise<boolean> {
    if (this.#done) return false;
    const value = await this.#read(wantedBytes);
    mark(`server: stdin read ${value?.length ?? "end"}`);
    if (!value) {
      this.#done = true;
      return false;
    }
    // A read that filled less than half of its buffer (a pipe handing over a little at a time)
    // is copied out: held as it is, each would keep its whole buffer (up to MAX_READ_BYTES)
    // alive until taken, many times the bytes it holds.
    this.#buffered.push(value.byteLength * 2 < value.buffer.byteLength ? value.slice() : value);
    this.#bufferedBytes += value.length;
    return true;
  }

  #take(length: number): Uint8Array {
    const out = new Uint8Array(length);
    let at = 0;
    while (at < length) {
      const head = this.#buffered[0];
      const n = Math.min(head.length, length - at);
      out.set(head.subarray(0, n), at);
      at += n;
      if (n === head.length) this.#buffered.shift();
      else this.#buffered[0] = head.subarray(n);
    }
    this.#bufferedBytes -= length;
    return out;
  }

  /** The next line without its "\n" (the rest of the stream at its end), or undefined at EOF. */
  async line(): Promise<string | undefined> {
    for (;;) {
      let offset = 0;
      for (const chunk of this.#buffered) {
        const at = chunk.indexOf(10);
        if (at >= 0) {
          const line = this.#take(offset + at + 1);
          return new TextDecoder().decode(line.subarray(0, line.length - 1));
        }
        offset += chunk.length;
      }
      if (!await this.#more()) {
        return this.#bufferedBytes
          ? new TextDecoder().decode(this.#take(this.#bufferedBytes))
          : undefined;
      }
    }
  }

  /** Exactly `length` bytes, or undefined when the stream ends first. */
  async bytes(length: number): Promise<Uint8Array | undefined> {
    while (this.#bufferedBytes < length) {
      if (!await this.#more(length - this.#bufferedBytes)) return undefined;
    }
    return this.#take(length);
  }

  async cancel(): Promise<void> {
    // A plain reader (stdin) stays open: nothing reads it after the hand-over.
    if ("cancel" in this.#reader) await this.#reader.cancel().catch(() => {});
  }
}

/**
 * Reads the server's stdin: the spec line (returned as soon as it is there), then the handed
 * metadata (`metadata`, settling when the mount process has sent it or closed stdin; a layer
 * without any gets undefined, so does every layer of a stream that is cut short).
 */
export async function readSpecAndMetadata(
  stream: ReadableStream<Uint8Array> | ByteReader,
): Promise<{ specText: string; metadata: Promise<HandedMetadata> }> {
  const input = new StreamBytes(stream);
  const specText = await input.line() ?? "";
  const metadata = (async (): Promise<HandedMetadata> => {
    try {
      const headerLine = await input.line();
      if (headerLine === undefined) return [];
      const header = JSON.parse(headerLine) as HandedHeader;
      const out: HandedMetadata = [];
      for (const length of header.metadataBytes) {
        if (!Number.isSafeInteger(length) || length < 0) return [];
        out.push(length ? await input.bytes(length) : undefined);
      }
      return out;
    } catch {
      return [];
    } finally {
      // Not awaited: the stream's end is nobody's business, and under TCG it took 0.13 s.
      void input.cancel();
    }
  })();
  return { specText, metadata };
}
