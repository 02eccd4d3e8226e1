/**
 * The registry options' specs (./argv.ts) and help text, without the registry client
 * (./registry_options.ts opens registries with them): a command that only lists the options,
 * such as `build` from a directory, starts without loading the OCI client.
 */

/** Option specs (./argv.ts) for registry access; spread into a command's own options. */
export const REGISTRY_OPTIONS = {
  username: { type: "string", short: "u" },
  password: { type: "string" },
  "password-stdin": { type: "boolean" },
  insecure: { type: "boolean" },
  "plain-http": { type: "boolean" },
  platform: { type: "string" },
} as const;

/** `--help` lines for the credential options of REGISTRY_OPTIONS. */
const CREDENTIAL_OPTIONS_HELP =
  `  -u, --username USER   user name for the registry (Basic or token auth)
      --password-stdin  read the password (or token) from stdin
      --password PASS   password on the command line (visible to other users: prefer
                        --password-stdin); without either, Docker's config.json is used
                        ($DOCKER_CONFIG/config.json or ~/.docker/config.json: auths,
                        credsStore, credHelpers)`;

/** `--help` lines for the rest of REGISTRY_OPTIONS: how to reach the registry, which platform. */
export const TRANSPORT_OPTIONS_HELP =
  `      --plain-http      talk HTTP instead of HTTPS (default for localhost, 127.x, [::1])
      --insecure        allow falling back to plain HTTP when HTTPS fails (TLS
                        certificate checks cannot be turned off)
      --platform P      os/arch[/variant] to pick from a multi-platform image
                        (default: this host)`;

/** `--help` lines for REGISTRY_OPTIONS. */
export const REGISTRY_OPTIONS_HELP = `Registry options:
${CREDENTIAL_OPTIONS_HELP}
${TRANSPORT_OPTIONS_HELP}`;

/** The values parseCommandArgs returns for REGISTRY_OPTIONS. */
export interface RegistryOptionValues {
  username?: string;
  password?: string;
  "password-stdin"?: boolean;
  insecure?: boolean;
  "plain-http"?: boolean;
  platform?: string;
}
