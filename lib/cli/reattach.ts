import type { Command } from "./command.ts";
import { onInterrupt } from "./interrupt.ts";
import { parseCommandArgs } from "./command.ts";
import { UsageError } from "../errors.ts";
import { checkRoot } from "../mount/target_dir.ts";
import { reattach, type ReattachOutcome, reattachTarget } from "../daemon/reattach.ts";
import { watchAndReattach } from "../daemon/watch.ts";
import { groupOutcomes, groupSubject } from "../daemon/reattach_detail.ts";
import { printable, printableJson, printTable } from "./table.ts";
import { credentialsFromOptions } from "./registry_options.ts";
import { stateRoot } from "../state/runtime_dirs.ts";

export const reattachCommand: Command = {
  name: "reattach",
  summary: "bring back mounts whose server died, without unmounting",
  help: `Usage: erofs-oci reattach (DEVICE | DIR | --all) [--json] [--accept-changed-image]
                          [--username USER --password-stdin]
       erofs-oci reattach --watch

After the server of a mount died (killed, OOM, upgrade), readers of the mount block instead
of failing. reattach reads each device's recovery file (/sys/block/nbdN/backend), checks
that the recorded image still has the same data (same digest and size, and a registry
image has the UUID, block and inode counts of the EROFS mounted from the device, read
with statfs so a dead device is never touched), starts a new server and hands the
kernel fresh connections; blocked reads then complete.
Devices whose server is alive are left alone. Devices attached by erofs-utils
(mount.erofs -t erofs.nbd) can be reattached too; from then on \`list\` and \`umount\`
know them by their mount point, or as /dev/nbdN when they are mounted in no mount of
this namespace (a container's).

FUSE mounts: a small keeper process holds each FUSE mount's /dev/fuse connection, so
readers wait when the server dies; reattach starts a server that takes the connection
over and answers the requests the dead one left (kernel 6.9+; before, those readers
stay blocked until \`erofs-oci umount --lazy DIR\` aborts the connection and they get an error). While the
registry does not answer, a FUSE takeover fails and readers keep waiting: try again.

  DEVICE   /dev/nbdN or nbdN
  DIR      a mount made by \`erofs-oci mount\` (all its layer devices)
  --all    every connected NBD device and FUSE mount whose server is gone
  --watch  keep running: watch every mount's server (pidfd) and reattach a mount
           within a second of its server's death, retrying with backoff (1 s to
           30 s); for a service (contrib/erofs-oci-reattach.service)

Options:
  --json   print the outcome per device as JSON
  --accept-changed-image
           serve what the record names now even if it is not the mounted image (a
           moved tag of a mount.erofs oci.layer= record); files may then read wrong
  -h, --help

Credentials: passwords given to \`mount\` with --password/--password-stdin are stored in
the recovery file (mode 0600, directory 0700) because reattach needs them; credentials
from Docker's config or a credential helper are looked up again instead. When they have
changed since the mount, give the current ones:
  -u, --username USER   user name for the registry
      --password-stdin  read the password (or token) from stdin
      --password PASS   on the command line (visible to other users)
They replace the recorded ones for the registry layers reattached, and are recorded for
the next time once a server runs with them.
Exit code 1 when any selected device could not be reattached.`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("reattach", argv, {
      all: { type: "boolean" },
      json: { type: "boolean" },
      watch: { type: "boolean" },
      "accept-changed-image": { type: "boolean" },
      username: { type: "string", short: "u" },
      password: { type: "string" },
      "password-stdin": { type: "boolean" },
    });
    if (positionals.length > 1) {
      throw new UsageError(`reattach: unexpected argument '${positionals[1]}'`);
    }
    if (positionals[0] === "") throw new UsageError("reattach: DEVICE or DIR is empty");
    if (values.watch) {
      if (values.all || positionals.length) {
        throw new UsageError("reattach: --watch watches every mount; give no DEVICE, DIR or --all");
      }
      if (values.username !== undefined) {
        throw new UsageError(
          "reattach: --watch uses the recorded credentials; give new ones to a reattach of a mount",
        );
      }
      mayReattach();
      const stop = new AbortController();
      onInterrupt(() => stop.abort());
      console.log("watching the servers of all mounts");
      await watchAndReattach({ signal: stop.signal });
      return 0;
    }
    if (values.all && positionals.length) {
      throw new UsageError("reattach: give DEVICE, DIR or --all, not several");
    }
    if (!values.all && positionals.length === 0) {
      throw new UsageError(
        "reattach: missing DEVICE, DIR or --all",
        "see `erofs-oci reattach --help`",
      );
    }
    const credentials = await credentialsFromOptions("reattach", values);
    mayReattach();
    const outcomes = await reattach(reattachTarget(positionals[0], values.all ?? false), {
      acceptChangedImage: values["accept-changed-image"],
      credentials,
    });
    return reportOutcomes(outcomes, values.json ?? false);
  },
};

/**
 * Prints the outcomes (a table, or JSON) on stdout and each refusal once on stderr: the devices
 * of a mount refused for one reason are one line naming them (a 10-layer mount over the
 * open-file limit said it 10 times, and the table said it again). Returns the exit code.
 */
export function reportOutcomes(outcomes: ReattachOutcome[], json: boolean): number {
  if (json) {
    console.log(printableJson(outcomes));
  } else if (outcomes.length === 0) {
    console.log("nothing to reattach: no FUSE mount and no connected NBD device");
  } else {
    // Why a device failed is said once, on stderr below, not in the table as well.
    printTable(
      ["DEVICE", "RESULT", "DETAIL"],
      outcomes.map((o) => [o.device, o.result, o.result === "failed" ? "see below" : o.detail]),
    );
  }
  const refusals = groupOutcomes(outcomes).filter((g) => g.result === "failed");
  for (const group of refusals) {
    console.error(`erofs-oci: ${printable(groupSubject(group))}: ${printable(group.detail)}`);
  }
  return refusals.length ? 1 : 0;
}

/**
 * Root, and a state directory only root can change: the index files reattach serves again
 * are there (recovery files are checked as they are read, recovery_store.ts).
 */
function mayReattach(): void {
  checkRoot("reattaching");
  stateRoot({ create: false });
}
