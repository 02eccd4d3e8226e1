# Sourced by scripts/erofs-oci-dev, and copied into the launcher by scripts/build.sh; calls the
# caller's `fail` (one line, exit 1).
# V8 reserves (not uses) tens of GiB of address space at start and aborts with a C stack trace
# when it cannot: below ~64 GiB of `ulimit -v` the runtime died at random (--version below ~40
# GiB, a mount server at 48). Read with builtins: no fork on every start.
if [ -r /proc/self/limits ]; then
  while read -r max address space soft _; do
    [ "$max $address $space" = "Max address space" ] || continue
    case $soft in
    unlimited | *[!0-9]*) ;;
    *)
      [ "$soft" -ge 68719476736 ] ||
        fail "the address-space limit (ulimit -v) is $((soft / 1048576)) MiB, below the 64 GiB the Deno runtime reserves (not uses): lift it (ulimit -v unlimited) and bound memory with a cgroup instead (systemd MemoryMax=)"
      ;;
    esac
    break
  done </proc/self/limits
fi
