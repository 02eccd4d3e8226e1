import assert from "node:assert/strict";
import { hostAllowed, machineNamesFrom } from "./scrape_guard.ts";

const HOSTS = `# comment
127.0.0.1 localhost
127.0.1.1 vm.corp.lan vm   # the machine
10.0.0.7  db.corp.lan db
`;
const RESOLV = "nameserver 10.0.0.1\nsearch corp.lan. lab.example\ndomain corp.lan\n";

Deno.test("machineNamesFrom: the hostname, its /etc/hosts line, and its resolv.conf suffixes", () => {
  assert.deepEqual(
    [...machineNamesFrom("VM", HOSTS, RESOLV)].sort(),
    ["vm", "vm.corp.lan", "vm.lab.example"],
  );
  // A hostname that is a full name brings its first label; no files, nothing more.
  assert.deepEqual([...machineNamesFrom("vm.corp.lan.", "", "")].sort(), ["vm", "vm.corp.lan"]);
  assert.deepEqual([...machineNamesFrom("", "", "search corp.lan")], []);
});

Deno.test("hostAllowed: only exact names of this machine, not names that start with one", () => {
  const machine = machineNamesFrom("vm", HOSTS, RESOLV);
  for (const host of ["vm", "VM.corp.lan:9464", "vm.corp.lan.", "vm.lab.example", "127.0.0.1:1"]) {
    assert.equal(hostAllowed(host, "127.0.0.1", machine), true, host);
  }
  for (
    const host of ["vm.attacker.example", "vm.corp.lan.attacker.example:9464", "db.corp.lan", "vmx"]
  ) {
    assert.equal(hostAllowed(host, "127.0.0.1", machine), false, host);
  }
  assert.equal(hostAllowed("metrics.corp.lan", "metrics.corp.lan", machine), true);
});
