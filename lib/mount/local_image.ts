/** True when IMAGE names an existing local file rather than a registry reference. */
export function isLocalImage(image: string): boolean {
  if (image.startsWith("/") || image.startsWith("./") || image.startsWith("../")) return true;
  try {
    return Deno.statSync(image).isFile;
  } catch {
    return false;
  }
}
