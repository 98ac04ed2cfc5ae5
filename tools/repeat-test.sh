#!/bin/sh
# Fresh-clone `make test`, RUNS times in a row, while another clone of the same
# commit rebuilds itself in a loop (`make -B -j2`) to load the machine.  This is
# the check behind "no test may depend on timing that load can stretch".
#
#   tools/repeat-test.sh [RUNS] [WORKDIR]      (defaults: 5, /tmp/repeat-test)
#
# Each run clones the repository this script sits in (its HEAD, committed
# state only) into WORKDIR/runN.  It stops at the first failing run.  One line
# per run goes to WORKDIR/summary.log (rc, the "N passed, N failed" line,
# seconds, commit, load average); full logs are WORKDIR/runN.log.  Exit status
# is 0 only when every run passed.
set -u
runs=${1:-5}
work=${2:-/tmp/repeat-test}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $runs in ''|*[!0-9]*) echo "usage: $0 [RUNS] [WORKDIR]" >&2; exit 2;; esac

rm -rf "$work"; mkdir -p "$work" || exit 2
git clone -q "$repo" "$work/load" || exit 2
stop=$work/stop
(
    cd "$work/load" || exit 1
    n=0
    while [ ! -f "$stop" ]; do
        make -B -j2 >/dev/null 2>&1
        n=$((n + 1))
        echo "load build $n done $(date +%T)" >> "$work/load.log"
    done
) &
loader=$!

status=0
i=1
while [ "$i" -le "$runs" ]; do
    git clone -q "$repo" "$work/run$i" || { status=2; break; }
    start=$(date +%s)
    (cd "$work/run$i" && make test) > "$work/run$i.log" 2>&1
    rc=$?
    end=$(date +%s)
    echo "run $i: rc=$rc $(tail -1 "$work/run$i.log") $((end - start)) s," \
         "head $(git -C "$work/run$i" rev-parse --short HEAD)," \
         "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/summary.log"
    if [ $rc != 0 ]; then status=1; break; fi
    rm -rf "$work/run$i/build"          # keep the disk bounded; the log stays
    i=$((i + 1))
done
touch "$stop"
wait $loader
echo "load builds: $(wc -l < "$work/load.log" 2>/dev/null || echo 0)" >> "$work/summary.log"
cat "$work/summary.log"
exit $status
