import { UserError } from "../errors.ts";

/**
 * A bare IMAGE (no registry, no directory) with one of these endings is meant as a file: as a
 * reference it would name a Docker Hub image no one publishes under such a name.
 */
const FILE_NAME_ENDING = /\.(erofs|img|tar|tgz|gz|zst)$/i;

/**
 * True when IMAGE names an existing local file rather than a registry reference. A bare name that
 * reads as a file name but is no file is refused here (UserError): looked up on Docker Hub, it
 * failed with a network or "manifest unknown" error that said nothing of the missing file. A
 * directory is refused too, with what it could be meant as (an OCI layout, a tree to build).
 * Relative names are looked up in `cwd` (tests name a directory rather than chdir, which moves
 * the working directory of everything else in the process too).
 */
export function isLocalImage(image: string, cwd = "."): boolean {
  const here = image.startsWith("/") ? image : `${cwd}/${image}`;
  let info: Deno.FileInfo | undefined;
  try {
    info = Deno.statSync(here);
  } catch {
    // not here: a path to a missing file, or a reference (below)
  }
  const path = image.startsWith("/") || image.startsWith("./") || image.startsWith("../");
  // A bare name that is also a directory here stays a reference (`ubuntu` beside an ubuntu/
  // build context), unless that directory is an OCI layout: then the layout was meant.
  if (info?.isDirectory) {
    const layout = isLayout(here);
    if (path || layout) throw directoryAsImage(image, layout, !path);
  }
  if (path || info?.isFile) return true;
  if (!image.includes("/") && FILE_NAME_ENDING.test(image)) {
    throw new UserError(
      `no file named ${image} here`,
      `check the file's name and directory; for a Docker Hub image of that name, write docker.io/library/${image}`,
    );
  }
  return false;
}

function isLayout(dir: string): boolean {
  try {
    return Deno.statSync(`${dir}/oci-layout`).isFile;
  } catch {
    return false;
  }
}

function directoryAsImage(image: string, layout: boolean, bare: boolean): UserError {
  return new UserError(
    `${image} is a directory, not an image`,
    (layout
      ? `it holds an OCI image layout: name it oci:${image}[:TAG]`
      : `make an image of its tree with \`erofs-oci build ${image} -o image.erofs\``) +
      (bare ? `; for the Docker Hub image of that name, write docker.io/library/${image}` : ""),
  );
}
