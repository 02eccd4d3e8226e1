# Sourced by scripts/erofs-oci-dev, and copied into the launcher by scripts/build.sh (with
# JIT_COMMANDS filled in from scripts/jit-commands): sets `jit` to the V8 flag of the command
# line "$@" — none for the commands that keep V8's JIT, --jitless for the others — and
# `jit_suffix` to tell the launcher's two names of the bundle apart: V8 keeps a code cache per
# file and refuses one made under other flags, so one name per set of flags keeps both cached.
# The command is the first argument that is not an option (--log-format takes a value). A
# `mount --index-missing` reads whole tar layers through the tar scanner as `index` does: with
# the JIT too (a 30 MB tar.gz layer: 1.1 s, 1.5 s without).
jit=--v8-flags=--jitless
jit_suffix=
jit_command=
takes_value=
for arg in "$@"; do
  if [ -n "$takes_value" ]; then
    takes_value=
    continue
  fi
  case $arg in
  --log-format) [ -z "$jit_command" ] && takes_value=1 ;;
  --) break ;;
  --index-missing) [ "$jit_command" = mount ] && jit= && jit_suffix=-jit ;;
  -*) ;;
  *)
    [ -n "$jit_command" ] && continue
    jit_command=$arg
    for name in $JIT_COMMANDS; do
      [ "$arg" = "$name" ] && jit= && jit_suffix=-jit
    done
    ;;
  esac
done
