/**
 * Prometheus text read back by a real parser (Python's prometheus_client, Debian
 * python3-prometheus-client) and scraped from a unix socket, for the metrics tests.
 */
import assert from "node:assert/strict";

export const SYSTEM_PYTHON = "/usr/bin/python3";
const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": family.name, "type": family.type,
                "samples": [[s.name, s.labels, s.value] for s in family.samples]})
print(json.dumps(out))
`;

export interface Family {
  name: string;
  type: string;
  samples: [string, Record<string, string>, number][];
}

export async function parsePrometheus(text: string): Promise<Family[]> {
  const child = new Deno.Command(SYSTEM_PYTHON, {
    args: ["-c", PARSE],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  assert(out.success, new TextDecoder().decode(out.stderr) + "\n" + text);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** GET /metrics over a unix socket, waiting up to 20 s for it to appear. */
export async function scrape(socket: string): Promise<string> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  try {
    for (let i = 0;; i++) {
      try {
        const response = await fetch("http://metrics/metrics", { client });
        assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
        return await response.text();
      } catch (error) {
        if (i >= 200) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    client.close();
  }
}

export function sampleOf(
  families: Family[],
  sample: string,
  labels: Record<string, string>,
): number {
  for (const f of families) {
    for (const [name, l, value] of f.samples) {
      if (name === sample && Object.entries(labels).every(([k, v]) => l[k] === v)) return value;
    }
  }
  throw new Error(`no sample ${sample} ${JSON.stringify(labels)}`);
}
