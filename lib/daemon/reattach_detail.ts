import type { ReattachOutcome } from "./reattach.ts";

/**
 * Why a reattach failed, for its outcome line, with the error's hint (where the failed
 * server's log was kept, the limit to raise). A registry that refuses the credentials the
 * mount recorded (rotated since): it says how to give the current ones instead (the hint of
 * a layer that cannot be read, to try again later, would not help).
 */
export function failureDetail(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  if (/rejected .*credentials \((401|403)\)/.test(message)) {
    return `${message}: give the current ones, e.g. \`echo "$TOKEN" | erofs-oci reattach DIR ` +
      "--username USER --password-stdin`";
  }
  const hint = (error as { hint?: unknown } | undefined)?.hint;
  return typeof hint === "string" && hint !== "" ? `${message}: ${hint}` : message;
}

/** Outcomes of one mount with one result and detail: said once, naming all its devices. */
export interface OutcomeGroup {
  devices: string[];
  result: ReattachOutcome["result"];
  detail: string;
  mount?: string;
}

/**
 * The outcomes grouped by mount, result and detail, in the order they come: the layers of a
 * mount refused for one reason (an open-file limit, a registry refusing the credentials) are
 * one group, said once, not once per device.
 */
export function groupOutcomes(outcomes: readonly ReattachOutcome[]): OutcomeGroup[] {
  const groups = new Map<string, OutcomeGroup>();
  for (const o of outcomes) {
    const key = JSON.stringify([o.mount ?? null, o.result, o.detail]);
    const group = groups.get(key);
    if (group) group.devices.push(o.device);
    else {
      groups.set(key, {
        devices: [o.device],
        result: o.result,
        detail: o.detail,
        ...(o.mount === undefined ? {} : { mount: o.mount }),
      });
    }
  }
  return [...groups.values()];
}

/**
 * What a group is about: its mount and devices (`/mnt/app (nbd0, nbd1)`), the devices of no
 * mount of ours (`nbd3`), or a FUSE mount's directory (its device).
 */
export function groupSubject(group: OutcomeGroup): string {
  const devices = group.devices.join(", ");
  return group.mount === undefined || group.devices.every((d) => d === group.mount)
    ? devices
    : `${group.mount} (${devices})`;
}
