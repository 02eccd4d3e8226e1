import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import { parseDurationMs, parseSize } from "./size.ts";
import { UsageError } from "../errors.ts";

Deno.test("parseSize: byte counts and binary suffixes", () => {
  const cases: [string, number][] = [
    ["0", 0],
    ["4096", 4096],
    ["512K", 512 * 1024],
    ["512k", 512 * 1024],
    ["256M", 256 * 1024 * 1024],
    ["256MiB", 256 * 1024 * 1024],
    ["64MB", 64 * 1024 * 1024],
    ["1.5G", 1.5 * 1024 ** 3],
    ["2T", 2 * 1024 ** 4],
    [" 8 M ", 8 * 1024 * 1024],
    ["10B", 10],
  ];
  for (const [text, bytes] of cases) assertEquals(parseSize(text), bytes, text);
});

Deno.test("parseSize: rejects anything else with a UsageError naming the option", () => {
  for (const bad of ["", "M", "-1", "1X", "1.2.3", "12 apples", "1e3"]) {
    throws(() => parseSize(bad, "--cache-size"), (e: unknown) => {
      return e instanceof UsageError && e.message.startsWith("--cache-size: invalid size");
    }, bad);
  }
  // Well formed, but past what a size can be: said so, not "invalid".
  throws(() => parseSize("99999999999T", "--cache-size"), (e: unknown) => {
    return e instanceof UsageError &&
      e.message === "--cache-size: size '99999999999T' is too large";
  });
});

Deno.test("parseDurationMs: units, a bare number in seconds, the bound and bad input", () => {
  const options = { maxMs: 400 * 86_400_000, hint: "h" };
  const cases: [string, number][] = [
    ["90", 90_000],
    ["500ms", 500],
    ["1.5s", 1500],
    ["5m", 300_000],
    ["1h", 3_600_000],
    ["7d", 7 * 86_400_000],
    [" 30D ", 30 * 86_400_000],
  ];
  for (const [text, ms] of cases) assertEquals(parseDurationMs(text, "--x", options), ms, text);
  for (const bad of ["", "d", "-1s", "1w", "soon", "1M"]) {
    throws(() => parseDurationMs(bad, "--older-than", options), (e: unknown) => {
      return e instanceof UsageError && e.message === `--older-than: invalid duration '${bad}'`;
    }, bad);
  }
  // Past the bound: said so, with the bound (it was "invalid", and the hint offered smaller units).
  throws(() => parseDurationMs("401d", "--older-than", options), (e: unknown) => {
    return e instanceof UsageError &&
      e.message === "--older-than: '401d' is longer than the most allowed (400d)";
  });
  throws(() => parseDurationMs("999h", "--idle-timeout", { maxMs: 2 ** 31 - 1, hint: "" }), {
    message: "--idle-timeout: '999h' is longer than the most allowed (24d)",
  });
});

Deno.test("parseDurationMs: a bare number is refused where a unit is required", () => {
  const options = { maxMs: 400 * 86_400_000, hint: "h", unitRequired: true };
  assertEquals(parseDurationMs("30d", "--older-than", options), 30 * 86_400_000);
  for (const bad of ["30", " 7 "]) {
    throws(() => parseDurationMs(bad, "--older-than", options), UsageError, bad);
  }
});
