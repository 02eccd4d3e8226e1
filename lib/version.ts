/** Version of erofs-oci, printed by `--version` and sent as part of the HTTP User-Agent. */
export const VERSION = "0.1.0";
export const USER_AGENT = `erofs-oci/${VERSION}`;
