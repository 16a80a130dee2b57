#!/usr/bin/env bash
# Interleaved before/after speed check of two source trees (e.g. a worktree of the previous commit and this one):
#   BEFORE=/path/to/old/checkout AFTER=. benchmarks/before_after.sh
# Runs `mammolens bench --small --only preprocess --only inference` alternately, twice each, with the 1-minute load.
set -euo pipefail
BEFORE=${BEFORE:?set BEFORE to the old checkout}; AFTER=${AFTER:-.}
for i in 1 2; do
  for t in before after; do
    if [ "$t" = before ]; then SRC=$BEFORE/src; else SRC=$AFTER/src; fi
    echo "== $t run $i load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH=$SRC mammolens bench --small --only preprocess --only inference --out "/tmp/bench_${t}${i}" 2>&1 \
      | grep -E "^preprocess|^inference"
  done
done
