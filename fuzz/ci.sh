#!/usr/bin/env bash
# A short fuzz run of every target for CI: fuzz/ci.sh [SECONDS per target, default 30].
# Exits non-zero on the first finding (its input is left in fuzz/artifacts/TARGET/).
set -euo pipefail
seconds=${1:-30}
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in plan checkpoint npz; do
    echo "== fuzzing $target for ${seconds}s"
    ./run.sh "$target" "$seconds"
done
