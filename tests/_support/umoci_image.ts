/**
 * A three-layer image made by real producers for conversion tests: umoci (unpack, edit,
 * repack) for the first two layers, GNU tar for a third with an opaque directory (umoci never
 * writes one) added with `umoci raw add-layer`. `umoci unpack` of the result is the reference
 * tree a converted image must equal. umoci leaves unchanged parent directories out of a layer
 * (private/ in layer 2 is implied by private/secret), so their metadata must come from below.
 */
import { runOk } from "./erofs_tree.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";

export interface UmociImage {
  /** The OCI layout directory; the image is tagged `TAG` in it. */
  layout: string;
  tag: string;
  /** The same image before its third layer. */
  twoLayerTag: string;
  /** `umoci unpack` of the image: its `rootfs/` is the expected tree. */
  rootfs: string;
}

const sh = (script: string) => runOk("sh", ["-ec", script]);

/** Builds the image under `dir` (which must exist and be empty). */
export async function makeUmociImage(dir: string): Promise<UmociImage> {
  const layout = `${dir}/layout`;
  const tag = "t";
  await runOk("umoci", ["init", "--layout", layout]);
  await runOk("umoci", ["new", "--image", `${layout}:${tag}`]);
  // Layer 1: every kind of entry.
  await runOk("umoci", ["unpack", "--image", `${layout}:${tag}`, `${dir}/b1`]);
  await sh(`cd '${dir}/b1/rootfs'
mkdir -p etc d/sub gone/deep private opq/old replaced
echo f1 > replaced/f1
echo hello > etc/config.txt
: > empty
head -c 5000 /dev/urandom > d/five-k
head -c 1048577 /dev/urandom > d/big
echo small > d/small
ln d/small d/small-link
ln -s ../etc/config.txt d/to-config
echo bye > gone/deep/f
echo old > opq/old/f
echo keep > opq/keep
chmod 700 private
cp etc/config.txt setuid; chmod 4755 setuid
echo owned > owned; chown 1234:5678 owned
setfattr -n user.note -v layer1 d/five-k
mkfifo fifo; mknod null-dev c 1 3
touch -d '2020-01-02 03:04:05.123456789' etc/config.txt
`);
  await runOk("umoci", ["repack", "--image", `${layout}:${tag}`, `${dir}/b1`]);
  // Layer 2: deletions (whiteouts), changes, additions.
  await runOk("umoci", ["unpack", "--image", `${layout}:${tag}`, `${dir}/b2`]);
  await sh(`cd '${dir}/b2/rootfs'
rm -rf gone empty d/small-link
# A directory replaced by a file: umoci writes the file, then replaced/.wh.f1 under it.
rm -rf replaced && echo now-a-file > replaced
echo changed > etc/config.txt
echo new > d/sub/added
echo secret > private/secret
chmod 711 d
`);
  await runOk("umoci", ["repack", "--image", `${layout}:${tag}`, `${dir}/b2`]);
  await runOk("umoci", ["tag", "--image", `${layout}:${tag}`, "two"]);
  // Layer 3 (GNU tar): an opaque directory, a whiteout in a subdirectory, and a file whose
  // directory (0700 below) the tar does not list.
  await sh(`mkdir -p '${dir}/l3/opq' '${dir}/l3/d' '${dir}/l3/private'
cd '${dir}/l3'
: > opq/.wh..wh..opq
echo fresh > opq/fresh
: > d/.wh.five-k
echo more > private/more
touch -d '2021-05-06 07:08:09' opq opq/fresh d private/more
tar --owner=0 --group=0 --numeric-owner -cf ../layer3.tar opq d private/more
`);
  await runOk("umoci", ["raw", "add-layer", "--image", `${layout}:${tag}`, `${dir}/layer3.tar`]);
  await runOk("umoci", ["unpack", "--image", `${layout}:${tag}`, `${dir}/expected`]);
  return { layout, tag, twoLayerTag: "two", rootfs: `${dir}/expected/rootfs` };
}

/** skopeo copy of the image (`tag`, default its full tag) to `target` in `registry`. */
export async function copyToRegistry(
  image: UmociImage,
  registry: { host: string },
  target: string,
  args: string[] = [],
  tag = image.tag,
): Promise<void> {
  await runOk("skopeo", [
    "copy",
    "--quiet",
    "--dest-tls-verify=false",
    ...args,
    `oci:${image.layout}:${tag}`,
    `docker://${registry.host}/${target}`,
  ]);
}

/**
 * Runs `fn` with the image built in a fresh work directory (`prefix`) and an open registry
 * (no auth); both are removed afterwards, whatever happens.
 */
export async function withUmociRegistry(
  prefix: string,
  fn: (image: UmociImage, registry: TestRegistry, work: string) => Promise<void>,
): Promise<void> {
  const work = await Deno.makeTempDir({ prefix });
  try {
    await using registry = await startRegistry({ auth: "none" });
    await fn(await makeUmociImage(work), registry, work);
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/**
 * A tree listing (treeListing) comparable with the umoci unpack's: the root's own line is left
 * out (its mtime is the mount point's, not the image's), and directory link counts too
 * (overlayfs reports 1 for merged directories).
 */
export function comparableListing(listing: string[]): string[] {
  return listing.filter((line) => !line.startsWith(".\t")).map((line) => {
    const fields = line.split("\t");
    if (fields[1] === "d") fields[4] = "-";
    return fields.join("\t");
  });
}
