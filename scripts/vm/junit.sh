# JUnit reports the VM harness writes itself (sourced by run-tests.sh and run-lanes.sh): a test
# file that never ran or never finished, or the harness itself, counts as one testcase.

xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' <<<"$1"; }

# junit_case OUT SUITE CASE failure|skipped MESSAGE: OUT holds one testcase CASE (class SUITE).
junit_case() {
  local out=$1 suite case outcome=$4 msg
  suite=$(xml_escape "$2")
  case=$(xml_escape "$3")
  msg=$(xml_escape "$5")
  if [ "$outcome" = failure ]; then
    outcome="<failure message=\"$msg\">$msg</failure>"
  else
    outcome="<skipped message=\"$msg\"/>"
  fi
  cat >"$out" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="vm">
  <testsuite name="$suite" tests="1">
    <testcase name="$case" classname="$suite">$outcome</testcase>
  </testsuite>
</testsuites>
XML
}

# junit_empty OUT: a report without testcases (the files' own reports carry them).
junit_empty() {
  cat >"$1" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="vm"></testsuites>
XML
}
