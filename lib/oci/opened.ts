/** What an image command has opened: a registry reference with its client, or an OCI layout. */
import type { RegistryClient } from "./client.ts";
import type { Credentials } from "./docker_config.ts";
import type { LayoutReference, OciLayout } from "./oci_layout.ts";
import type { ImageReference } from "./reference.ts";
import type { ResolvedImage } from "./resolve.ts";

/** What an image command needs to talk to the registry. */
export interface OpenedRegistry {
  ref: ImageReference;
  client: RegistryClient;
  /** `--platform` when given (validated), else undefined = host platform. */
  platform?: string;
  /** Credentials from the command line (not from Docker's config), e.g. for recovery records. */
  credentials?: Credentials;
  plainHttp?: boolean;
  insecure: boolean;
}

/** An image to read from: a registry reference or a local OCI layout (`oci:PATH[:TAG]`). */
export interface OpenedImage {
  /** The image as the user named it, normalised (for messages and output). */
  name: string;
  /** Repository for blob calls (empty for a layout). */
  repository: string;
  /** Where manifests and blobs come from. */
  store: RegistryClient | OciLayout;
  /** Present for registry images. */
  registry?: OpenedRegistry;
  /** Present for `oci:` images. */
  layout?: { ref: LayoutReference; layout: OciLayout };
  /** Resolves the image for `--platform` (or the host platform). */
  resolve(): Promise<ResolvedImage>;
  close(): void;
}
