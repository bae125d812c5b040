#!/bin/sh
# The probe runner started before a booted guest is saved (issue 12), so a
# restored guest skips node's and koffi's cold start. Protocol in
# src/protocol/protocol.ts (2b); file names are its PRESTART_FILES.
#   prestart.sh start HASH TIMEOUT_SEC
#     starts `node runner.cjs --wait HASH DIR` from this directory, detached
#     (its own session, stdin /dev/null, stdout and stderr on FIFOs opened
#     read-write so nothing blocks before a reader comes), and returns once it
#     has loaded its probes and waits; prints the `ready` line.
#   prestart.sh go HASH CONFIG
#     hands CONFIG and this run's bundle HASH to the waiting runner, copies its
#     stdout and stderr to ours, exits with its exit code. Exit 3 with nothing
#     run when no runner waits or it was started from another bundle.
set -u
# Shell builtins where they do (read, ${0%/*}), and busybox's applets (a
# static binary) for the rest of `go`, which is on every restored run's path:
# under TCG an exec of cat costs 95 ms, of busybox cat 17 ms; timeout and sh
# 235 ms, busybox's 45 ms.
case "$0" in */*) dir=$(cd "${0%/*}" && pwd) ;; *) dir=$(pwd) ;; esac
bb=; [ -x /bin/busybox ] && bb=/bin/busybox
NOT_PRESTARTED=3

case "${1:-}" in
start)
  [ $# -eq 3 ] || { echo "usage: $0 start HASH TIMEOUT_SEC" >&2; exit 2; }
  rm -f "$dir/control" "$dir/out" "$dir/err" "$dir/ready" "$dir/status"
  mkfifo "$dir/control" "$dir/out" "$dir/err" || exit 1
  setsid -f node "$dir/runner.cjs" --wait "$2" "$dir" < /dev/null 1<> "$dir/out" 2<> "$dir/err"
  i=0
  while [ ! -s "$dir/ready" ]; do
    i=$((i + 1))
    if [ $i -gt $(($3 * 10)) ]; then
      echo "the waiting probe runner did not get ready in $3 s; its stderr so far:" >&2
      timeout 1 cat "$dir/err" >&2
      pkill -f "runner.cjs --wait" 2>/dev/null
      exit 1
    fi
    sleep 0.1
  done
  cat "$dir/ready"
  ;;
go)
  [ $# -eq 3 ] || { echo "usage: $0 go HASH CONFIG" >&2; exit 2; }
  # Alive and not a zombie nobody has reaped yet.
  zombie() {
    while read -r key value _; do [ "$key" = State: ] && { [ "$value" = Z ]; return; }; done < "/proc/$1/status"
    return 1
  }
  { read -r ready < "$dir/ready"; } 2>/dev/null && pid=${ready%% *} && kill -0 "$pid" 2>/dev/null &&
    ! zombie "$pid" 2>/dev/null || {
    echo "no waiting probe runner" >&2
    exit $NOT_PRESTARTED
  }
  $bb cat "$dir/out" & out=$!
  $bb cat "$dir/err" >&2 & err=$!
  # The runner reads the control FIFO; should it have died since the check, the open would never return.
  if ! $bb timeout 10 $bb sh -c 'printf "%s %s\n" "$1" "$2" > "$3"' sh "$2" "$3" "$dir/control"; then
    kill $out $err 2>/dev/null
    echo "the waiting probe runner did not take the go line" >&2
    exit $NOT_PRESTARTED
  fi
  # cat ends at the runner's exit (which writes status first) or when our stdout is gone (the host gave up on
  # the channel): then the runner, whose FIFO never reports EPIPE, is ended as a cold one would be by its pipe.
  wait $out
  [ -s "$dir/status" ] || kill -KILL "$pid" 2>/dev/null
  wait $err
  [ -s "$dir/status" ] || { echo "the waiting probe runner (pid $pid) ended without an exit status" >&2; exit 1; }
  read -r status < "$dir/status"
  exit "$status"
  ;;
*)
  echo "usage: $0 start HASH TIMEOUT_SEC | go HASH CONFIG" >&2
  exit 2
  ;;
esac
