#!/bin/sh
# Runs one kernel selftest in the guest the way kselftest runs it
# (run_kselftest.sh -t COLLECTION:TEST, TAP 13 with the test's own TAP nested
# as "# " comments), between two /dev/kmsg markers so the host can attribute
# kernel reports to the test (src/protocol/protocol.ts, formatSelftestMarker).
# hwlab puts this file beside run_kselftest.sh in the uploaded install tree.
#
#   hwlab-run-one.sh INDEX COLLECTION TEST TIMEOUT ARGS_VAR [ARG...]
#   hwlab-run-one.sh --stacks    the running test's processes with their kernel stacks
#   hwlab-run-one.sh --kill      SIGKILL to every process of the running test's session
#
# ARGS_VAR is kselftest's KSELFTEST_<NAME>_ARGS variable; the ARGs (the
# device BDFs of the vfio selftests) go there. The test runs in its own
# session whose id is written to hwlab-current.sid: the host kills that
# session when the test outlives its timeout, after listing the blocked
# tasks. A session, not a process group: GNU timeout, which runner.sh wraps
# every test in, moves the test into a process group of its own. TIMEOUT is
# kselftest's own (a backstop above the host's).
set -u
dir=$(dirname "$0")
sid_file=$dir/hwlab-current.sid

# The test's processes are those whose session is the recorded one (field 4
# after the command's closing parenthesis in /proc/PID/stat: state ppid pgrp
# session). Shell builtins only for the scan (read, parameter expansion):
# a fork per process is slow in a TCG guest that a runaway test keeps busy.

case "${1:-}" in
--stacks)
  sid=$(cat "$sid_file" 2>/dev/null) || { echo "(no test running)"; exit 0; }
  for d in /proc/[0-9]*; do
    { read -r stat < "$d/stat"; } 2>/dev/null || continue
    set -- ${stat##*) }
    [ "${4:-}" = "$sid" ] || continue
    { read -r comm < "$d/comm"; } 2>/dev/null
    echo "pid ${d#/proc/} $comm state $1"
    { while read -r l; do echo "  $l"; done < "$d/stack"; } 2>/dev/null
  done
  exit 0 ;;
--kill)
  sid=$(cat "$sid_file" 2>/dev/null) || exit 0
  for d in /proc/[0-9]*; do
    { read -r stat < "$d/stat"; } 2>/dev/null || continue
    set -- ${stat##*) }
    [ "${4:-}" = "$sid" ] && kill -9 "${d#/proc/}" 2>/dev/null
  done
  exit 0 ;;
esac

# kselftest's runner.sh writes each test's output to $logfile, /dev/stdout by
# default: hwlab's guest init makes /dev/stdout and /dev/fd (a bare devtmpfs
# has neither).

index=$1 collection=$2 test=$3 timeout=$4 argsvar=$5
shift 5
cd "$dir" || exit 2
if [ $# -gt 0 ]; then export "$argsvar=$*"; fi
echo "hwlab-selftest: begin $index $collection:$test" > /dev/kmsg
# In the background a POSIX sh does not make the job a group leader, so
# setsid execs in place: the pid is the new session's id.
setsid ./run_kselftest.sh -t "$collection:$test" -o "$timeout" &
pid=$!
echo "$pid" > "$sid_file"
wait "$pid"
rc=$?
rm -f "$sid_file"
echo "hwlab-selftest: end $index $collection:$test" > /dev/kmsg
exit "$rc"
