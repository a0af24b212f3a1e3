#!/usr/bin/env bash
# The whole test suite under the `dev` hypothesis profile (random exploration, 200 examples a
# property), once per --hypothesis-seed, for several seeds in a row: what a newcomer's
# `pytest` meets, N times. Outside the default run (CI uses the derandomized `ci` profile).
#
#   tests/stress.sh            # seeds 1..10
#   tests/stress.sh 5 100      # 5 seeds starting at 100
#   tests/stress.sh 10 1 -m "not notebooks"   # extra arguments go to pytest
#
# Stops at the first failing seed and prints it; hypothesis prints the failing example and
# stores it in .hypothesis/, so `pytest` replays it until it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10}"
first="${2:-1}"
shift $(($# > 2 ? 2 : $#))
start=$(date +%s)
for ((seed = first; seed < first + count; seed++)); do
    echo "== hypothesis seed $seed"
    env -u CI HYPOTHESIS_PROFILE=dev python -m pytest -q -p no:cacheprovider \
        --hypothesis-seed="$seed" "$@"
done
echo "== $count seeds passed in $(($(date +%s) - start)) s"
