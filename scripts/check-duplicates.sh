#!/usr/bin/env bash
# Fails when the `duplicates` tool (on developer machines) reports copied code; on machines
# without it (CI) there is nothing to run, which is said rather than hidden.
if ! command -v duplicates >/dev/null; then
  echo "duplicates tool not available here: not checked"
  exit 0
fi
out=$(duplicates --seconds 30 --repo "${1:-.}")
echo "$out"
case "$out" in "no duplicates"*) exit 0 ;; *) exit 1 ;; esac
