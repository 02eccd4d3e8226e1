import { UserError } from "../errors.ts";

/**
 * A bare IMAGE (no registry, no directory) with one of these endings is meant as a file: as a
 * reference it would name a Docker Hub image no one publishes under such a name.
 */
const FILE_NAME_ENDING = /\.(erofs|img|tar|tgz|gz|zst)$/i;

/**
 * True when IMAGE names an existing local file rather than a registry reference. A bare name that
 * reads as a file name but is no file is refused here (UserError): looked up on Docker Hub, it
 * failed with a network or "manifest unknown" error that said nothing of the missing file.
 */
export function isLocalImage(image: string): boolean {
  if (image.startsWith("/") || image.startsWith("./") || image.startsWith("../")) return true;
  try {
    if (Deno.statSync(image).isFile) return true;
  } catch {
    // not here: a reference, unless it reads as a file name (below)
  }
  if (!image.includes("/") && FILE_NAME_ENDING.test(image)) {
    throw new UserError(
      `no file named ${image} here`,
      `check the file's name and directory; for a Docker Hub image of that name, write docker.io/library/${image}`,
    );
  }
  return false;
}
