#!/usr/bin/env bash
# Runs one fuzz target for a number of seconds, starting from the checked-in seeds.
#
#   fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]     TARGET: plan, checkpoint or npz
#
# New inputs that reach new code are kept in fuzz/corpus/TARGET/ (not checked in); a crash, an
# abort, a timeout or running out of memory stops the run with a non-zero exit and leaves the input
# in fuzz/artifacts/TARGET/. Needs cargo-fuzz (`cargo install cargo-fuzz`); see fuzz/README.md.
set -euo pipefail

target=${1:?usage: fuzz/run.sh plan|checkpoint|npz [SECONDS] [libFuzzer flags...]}
seconds=${2:-60}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")"
case "$target" in plan | checkpoint | npz) ;; *) echo "unknown fuzz target '$target' (plan, checkpoint, npz)" >&2; exit 2 ;; esac

# cargo-fuzz passes nightly-only compiler flags (-Zsanitizer=address and coverage options). Use
# the nightly toolchain where one is installed; otherwise let the stable compiler accept them.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi

mkdir -p "corpus/$target"
# -O: optimised; -a: with debug assertions, so integer overflow on file input is a finding too.
# -timeout: one input taking 10 s counts as a hang; -rss_limit_mb: 2 GiB counts as out of memory.
exec cargo "${toolchain[@]}" fuzz run -O -a "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
