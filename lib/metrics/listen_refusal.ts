/**
 * The one line for a `mount --metrics-listen` address that cannot be taken, whether the CLI's
 * early check found it taken or the mount server's own bind did (another process took it in
 * between: the check binds and closes).
 */
import { MountError } from "../errors.ts";

export function metricsListenRefusal(listen: string, reason: string): MountError {
  return new MountError(
    `--metrics-listen ${listen}: ${reason}`,
    "choose another address, or leave --metrics-listen out",
  );
}
