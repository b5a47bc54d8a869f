#!/usr/bin/env bash
# Benchmarks Y1-Y4 of `fspl sync` (issue 16), side by side, one run:
#
#   Y1  initial sync of a tree from A to B (sync once on A, push, sync once
#       on B) vs `tar c | zstd | tar x` of the same tree and `rsync -a` to
#       an empty target;            goal <= 1.2x tar|zstd|tar, <= rsync
#   Y2  a round with no changes over that tree vs `rsync -a --dry-run`;
#                                   goal <= 1.0x
#   Y3  one changed file, a daemon on each side (dir: pushes): change ->
#       file updated on the other side, p50 and p99; goal < interval_min
#   Y4  peak RSS of the rounds of Y1 (/usr/bin/time -f %M); goal <= 64 MiB
#
# Usage: bench/sync.sh [--quick] [--out FILE]
#   full:  100,000 files, ~1 GiB (mixed sizes: most small, some 1-64 MiB)
#   quick: 10,000 files, ~100 MiB
# FSPL=/path/to/fspl uses that binary (default: target/release/fspl, built
# when missing). Files live in target/bench-tmp/sync.PID (same file system
# as the checkout), or in BENCH_DIR/sync.PID when BENCH_DIR is set (say, a
# journaled ext4: an ext4 without a journal, like this VM's, makes every
# file creation walk past the inodes freed in the last minute, so a run
# right after a large deletion is several times slower, for every
# contender), and are removed at the end. Not a test: nothing fails on a
# slow number.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
OUT=bench/SYNC-RESULTS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; OUT=bench/SYNC-RESULTS-quick.md ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in rsync zstd /usr/bin/time; do
  command -v "$tool" >/dev/null || apt-get install -y -q rsync zstd time >/dev/null
done
FSPL=${FSPL:-target/release/fspl}
[ -x "$FSPL" ] || cargo build --release -p fspl
FSPL=$(realpath "$FSPL")
W=${BENCH_DIR:-target/bench-tmp}/sync.$$
mkdir -p "$W"
W=$(realpath "$W")
trap 'rm -rf "$W"' EXIT
if [ "$QUICK" = 1 ]; then FILES=10000; BIGS=2; else FILES=100000; BIGS=12; fi

echo "making a tree of $FILES files..." >&2
python3 - "$W/A" "$FILES" "$BIGS" <<'PY'
import os, sys, random
root, n, bigs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(16)
for i in range(n):
    d = os.path.join(root, f"d{i % 200:03}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    size = r.choice([100, 500, 2000, 8000, 9000])
    with open(os.path.join(d, f"f{i:06}.dat"), "wb") as f:
        f.write(os.urandom(size // 2) + b"x" * (size - size // 2))
for i in range(bigs):
    with open(os.path.join(root, f"big{i}.bin"), "wb") as f:
        for _ in range(r.choice([1, 8, 32, 64])):
            f.write(os.urandom(1 << 20))
PY
sync
SIZE=$(du -sb "$W/A" | cut -f1)

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
side() { # side NAME PEER
  echo --dir "$W/$1" --name "$1" --peer "$2" --outbox "$W/$1-out" --inbox "$W/$1-in" --state "$W/$1-state"
}

# Each contender of Y1 starts with the tree in the page cache: read it
# whole first. (On a VM that reclaims idle pages, as this one does with
# DAMON, a tree left alone for seconds goes cold, and whichever ran first
# would pay for reading it from disk.)
warm() { tar cf - -C "$W/A" . | cat >/dev/null; }

# Y1 + Y4
mkdir -p "$W/B"
"$FSPL" sync once $(side B A) >/dev/null   # B's queues and state
warm
t0=$(now)
/usr/bin/time -f %M -o "$W/rss-a" "$FSPL" sync once $(side A B) >/dev/null
"$FSPL" push -q "$W/A-out" "dir:$W/B-in" 2>/dev/null
/usr/bin/time -f %M -o "$W/rss-b" "$FSPL" sync once $(side B A) >/dev/null
t1=$(now)
Y1=$(secs "$t0" "$t1")
sync
warm
t0=$(now); mkdir "$W/T"; tar cf - -C "$W/A" . | zstd -q -T0 | zstd -dq | tar xf - -C "$W/T"; sync; t1=$(now)
TAR=$(secs "$t0" "$t1")
warm
t0=$(now); rsync -a "$W/A/" "$W/R/"; sync; t1=$(now)
RSYNC=$(secs "$t0" "$t1")
diff -r -x .fspl-sync "$W/A" "$W/B" >/dev/null && SAME=yes || SAME=NO

# Y2
t0=$(now); "$FSPL" sync once $(side A B) >/dev/null; t1=$(now)
Y2=$(secs "$t0" "$t1")
t0=$(now); rsync -a --dry-run "$W/A/" "$W/R/"; t1=$(now)
DRY=$(secs "$t0" "$t1")

# Y3: daemons on both sides, interval_min = 10
cfg() { # cfg NAME PEER
  cat <<T
[daemon]
socket = "$W/$1.sock"
rescan_interval = 3600
[[job]]
name = "sync"
type = "sync"
dir = "$W/$1"
local_name = "$1"
peer = "$2"
outbox = "$W/$1-out"
inbox = "$W/$1-in"
state = "$W/$1-state"
interval_min = 10
interval_max = 30
[[job]]
name = "push"
type = "push"
outbox = "$W/$1-out"
to = "dir:$W/$2-in"
T
}
cfg A B > "$W/a.toml"; cfg B A > "$W/b.toml"
"$FSPL" daemon -c "$W/a.toml" 2>"$W/a.log" & DA=$!
"$FSPL" daemon -c "$W/b.toml" 2>"$W/b.log" & DB=$!
sleep 3
LAT=()
N=$([ "$QUICK" = 1 ] && echo 5 || echo 20)
for i in $(seq 1 "$N"); do
  echo "change $i" > "$W/A/changed.txt"
  t0=$(now)
  while [ "$(cat "$W/B/changed.txt" 2>/dev/null)" != "change $i" ]; do sleep 0.05; done
  t1=$(now)
  LAT+=("$(secs "$t0" "$t1")")
  sleep 1
done
kill "$DA" "$DB"; wait "$DA" "$DB" 2>/dev/null || true
read -r P50 P99 < <(printf '%s\n' "${LAT[@]}" | python3 -c "
import sys
v = sorted(float(x) for x in sys.stdin)
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print(f'{q(0.5):.2f} {q(0.99):.2f}')")

RSSA=$(cat "$W/rss-a"); RSSB=$(cat "$W/rss-b")
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
{
  echo "# fspl sync benchmarks (Y1-Y4)"
  echo
  echo "$(date -u +%F) · $(nproc) cores · load $(cut -d' ' -f1 /proc/loadavg) · $FILES files + $BIGS large, $((SIZE / 1048576)) MiB · trees identical after Y1: $SAME · $(df -T "$W" | awk 'NR == 2 {print $2}') at $W"
  echo
  echo "| row | measured | compared with | ratio | goal |"
  echo "|---|---|---|---|---|"
  echo "| Y1 initial sync A→B | ${Y1} s | tar\\|zstd\\|tar ${TAR} s; rsync -a ${RSYNC} s | $(ratio "$Y1" "$TAR")×; $(ratio "$Y1" "$RSYNC")× | ≤ 1.2×; ≤ 1× |"
  echo "| Y2 round without changes | ${Y2} s | rsync -a --dry-run ${DRY} s | $(ratio "$Y2" "$DRY")× | ≤ 1.0× |"
  echo "| Y3 change → other side (daemons, interval_min 10 s) | p50 ${P50} s, p99 ${P99} s | interval_min 10 s | | < 10 s |"
  echo "| Y4 peak RSS during Y1 | sender $((RSSA / 1024)) MiB, receiver $((RSSB / 1024)) MiB | 64 MiB | | ≤ 64 MiB |"
} > "$OUT"
cat "$OUT"
