#!/bin/sh
# Runs Criterion test programs under valgrind memcheck:
#
#   tests/valgrind.sh BUILD_DIR LOG_DIR TEST...
#
# Criterion runs every test in a child process (and some tests run the
# tools), and it does not look at how a child exits: valgrind's
# --error-exitcode alone would miss an error in a test. So every process
# writes its own log (--trace-children, --log-file=...%p) and any log whose
# ERROR SUMMARY is not zero fails the run; leaks count (--leak-check=full).
# Prints one line per program and the first report of each failing log.
# Exits 0 if every program passed clean, 1 otherwise, 2 on bad usage.
set -u

VALGRIND=${VALGRIND:-valgrind}
if [ $# -lt 3 ]; then
    echo "usage: $0 BUILD_DIR LOG_DIR TEST..." >&2
    exit 2
fi
build=$1
logs=$2
shift 2
if ! command -v "$VALGRIND" >/dev/null 2>&1; then
    echo "tern: $VALGRIND not found; install it with: apt-get install -y valgrind" >&2
    exit 1
fi
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
failed=""
for t in "$@"; do
    if [ ! -x "$build/tests/$t" ]; then
        echo "==> tern: valgrind $t: $build/tests/$t not built" >&2
        failed="$failed $t"
        continue
    fi
    rm -rf "${logs:?}/$t"
    mkdir -p "$logs/$t"
    start=$(date +%s)
    # From the tests directory, as ctest runs them (some find tools by
    # relative path). --jobs=1: one child at a time.
    (cd "$build/tests" && "$VALGRIND" --error-exitcode=1 --leak-check=full --trace-children=yes \
        --num-callers=30 --log-file="$logs/$t/%p.log" "./$t" --jobs=1 --short-filename) \
        >"$logs/$t.out" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    bad=$(grep -L 'ERROR SUMMARY: 0 errors' "$logs/$t"/*.log 2>/dev/null)
    summary=$(grep 'Synthesis' "$logs/$t.out" | tail -n 1)
    if [ "$rc" -ne 0 ] || [ -n "$bad" ]; then
        echo "==> tern: valgrind $t FAILED in ${secs}s (exit $rc) $summary" >&2
        for f in $bad; do
            echo "---- $f" >&2
            grep -m 40 -E '==[0-9]+== ' "$f" | grep -v -E 'Copyright|Using Valgrind|Memcheck, a' >&2
        done
        [ -n "$bad" ] || tail -n 20 "$logs/$t.out" >&2
        failed="$failed $t"
    else
        echo "==> tern: valgrind $t clean in ${secs}s $summary"
    fi
done
if [ -n "$failed" ]; then
    echo "==> tern: valgrind FAILED:$failed (logs in $logs)" >&2
    exit 1
fi
exit 0
