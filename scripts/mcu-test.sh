#!/usr/bin/env bash
# The bare-metal trainer under emulation (issue 9, part 3): builds examples/mcu, a firmware for
# qemu-system-arm's mps2-an500 (Cortex-M7) that embeds a plan compiled here and trains it with the
# engine's reference kernels in a static arena, runs it in qemu with a timeout, and checks that
#   - it trains every step and its loss falls (the last epoch's mean loss is below 0.75 times the
#     first epoch's);
#   - the plan's arena and weights fit 256 KiB, and so does the RAM the firmware uses (static RAM
#     plus the stack's measured peak; memory.x also caps RAM at 256 KiB, so a larger image does
#     not link);
#   - the heap does not grow while training (a step allocates nothing);
#   - its losses equal the host's `pock train --kernels reference` of the same plan and batches
#     within 1e-5 (absolute).
# It does so twice: for the float32 plan, then for the same model compiled with --quantize int8
# (int8 weights and activations, QAS; ARCHITECTURE.md "Int8 training"), whose loss must also fall
# and end within 0.1 of the float32 plan's last-epoch mean. They are not equal bit for bit: the host's engine computes exp and
#     ln through std (glibc's expf and logf) and the firmware's through the `libm` crate, which
#     differ in the last bit now and then (the host's engine built without std gives the
#     firmware's losses exactly); over the 64 steps here they differ by at most about 2e-7.
# Prints how long each part takes; exits non-zero on the first failure.
#
# The firmware is built with Debian's rustc-web (as scripts/cross-test.sh: its core and alloc are
# built from rust-web-src with -Zbuild-std) and linked by binutils-arm-none-eabi's ld.
#
# usage: scripts/mcu-test.sh
#   POCK_MCU_INSTALL=0   do not install packages (fail instead if one is missing)
#   POCK_MCU_TIMEOUT     seconds the firmware may run in qemu (default 120)
#   POCK_MCU_TARGET_DIR  where the firmware is built (default target/mcu)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
part() { echo "== mcu: $1 took $((SECONDS - $2)) s"; }
die() {
  echo "mcu-test: $*" >&2
  exit 1
}

# ------------------------------------------------------------------------------------ packages
t=$SECONDS
pkgs="rustc-web cargo-web rust-web-src qemu-system-arm binutils-arm-none-eabi"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "mcu: rustc-web, rust-web-src, qemu-system-arm and binutils-arm-none-eabi are installed"
elif [ "${POCK_MCU_INSTALL:-1}" = 0 ]; then
  die "missing packages:$missing, and POCK_MCU_INSTALL=0; run this script once without it (as root, or with sudo available), or install them with apt"
else
  # shellcheck source=scripts/apt.sh
  . scripts/apt.sh
  apt_prepare mcu "install rustc 1.96+ with rust-src, qemu-system-arm and arm-none-eabi-ld by hand, then run it with POCK_MCU_INSTALL=0"
  apt_update mcu
  # rustc-web, cargo-web and rust-web-src must be one version (scripts/cross-test.sh pins them
  # when it installs them; alone, this script takes the candidate of all three).
  # shellcheck disable=SC2086
  $sudo apt-get install -y -q --no-install-recommends $missing
fi
part "packages (apt)" "$t"

# ------------------------------------------------------------------------------------ host side
# A 3-layer MLP on 3-axis accelerometer windows (48 features, 4 activities); the biases and the
# classifier train (--update bias), the hidden weights stay frozen in the plan's weight section
# (flash on the board). --target cortex-m7 refuses a plan whose arena and weights exceed 256 KiB.
# The int8 plan is the same model quantized with the training data as calibration.
t=$SECONDS
batch=16
epochs=4
seed=5
steps=$((256 / batch * epochs))
# The host's build, as `cargo test --workspace` made it in CI (nothing is compiled again).
# shellcheck source=scripts/host-pock.sh
. scripts/host-pock.sh
host_pock=$(host_pock_binary)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$(workspace_executable example mcu_data)" "$work/data" "$batch" "$epochs" "$seed"
model=zoo:mlp:inputs=48,hidden=128,depth=2,classes=4
common=(--batch "$batch" --seed 3 --optimizer sgd --lr 0.2 --momentum 0.9 --update bias --target cortex-m7)
"$host_pock" -q compile "$model" "${common[@]}" -o "$work/f32.pock"
"$host_pock" -q compile "$model" "${common[@]}" --quantize int8 --calib "$work/data/train.npz" -o "$work/int8.pock"
for variant in f32 int8; do
  "$host_pock" -q train "$work/$variant.pock" --data "$work/data/train.npz" --epochs "$epochs" --seed "$seed" --kernels reference \
    --log-json "$work/host-$variant.jsonl" 2>"$work/host.stderr" >/dev/null || {
    cat "$work/host.stderr" >&2
    die "pock train of the $variant plan on the host failed"
  }
done
part "host: build pock, write the data, compile the float32 and int8 plans for cortex-m7, train them" "$t"

target_dir=${POCK_MCU_TARGET_DIR:-$root/target/mcu}
firmware=$target_dir/thumbv7em-none-eabihf/release/pock-mcu
failures=0
fail() {
  echo "mcu: $*" >&2
  failures=$((failures + 1))
}
declare -A last_mean

# Builds the firmware around plan $1 (f32 or int8), runs it in qemu and checks its output.
run_firmware() {
  local variant=$1 t out rc run_s
  # ---------------------------------------------------------------------------------- firmware
  t=$SECONDS
  # rustup's ~/.cargo/bin comes first in PATH: name Debian's compiler (rustup's has no std sources
  # for thumbv7em here). The firmware's own .cargo/config.toml picks the target, linker and runner.
  (cd examples/mcu && POCK_MCU_PLAN="$work/$variant.pock" POCK_MCU_BATCHES="$work/data/batches.bin" CARGO_TARGET_DIR="$target_dir" \
    RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --quiet --release -Zbuild-std=core,alloc)
  arm-none-eabi-size "$firmware"
  part "firmware ($variant plan): build for thumbv7em-none-eabihf (release)" "$t"

  t=$SECONDS
  out=$work/firmware-$variant.out
  rc=0
  timeout "${POCK_MCU_TIMEOUT:-120}" qemu-system-arm -cpu cortex-m7 -machine mps2-an500 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native -kernel "$firmware" >"$out" 2>&1 || rc=$?
  run_s=$((SECONDS - t))
  grep -v '^step ' "$out" || true
  [ "$rc" = 124 ] && die "the $variant firmware did not finish within ${POCK_MCU_TIMEOUT:-120} s in qemu (raise POCK_MCU_TIMEOUT on a slow machine)"
  [ "$rc" = 0 ] || die "the $variant firmware exited with status $rc (its output is above)"
  grep -qx done "$out" || die "the $variant firmware exited without printing 'done'"
  part "firmware ($variant plan): $steps steps in qemu-system-arm mps2-an500" "$t"

  # ---------------------------------------------------------------------------------- checks
  fw_losses() { sed -n 's/^step [0-9]* loss //p' "$out"; }
  host_losses() { sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$work/host-$variant.jsonl"; }
  local n per_epoch first last plan_total ram_used d same train_ms
  n=$(fw_losses | wc -l)
  [ "$n" = "$steps" ] || fail "$variant: the firmware printed $n losses, expected $steps"
  per_epoch=$((steps / epochs))
  read -r first last < <(fw_losses | awk -v k="$per_epoch" -v s="$steps" '
    NR <= k { a += $1 } NR > s - k { b += $1 } END { printf "%.6f %.6f\n", a / k, b / k }')
  last_mean[$variant]=$last
  if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.75 * a) }'; then
    echo "mcu: $variant: the loss falls: mean $first over the first epoch, $last over the last"
  else
    fail "$variant: the loss did not fall enough: mean $first over the first epoch, $last over the last (want below 0.75 x)"
  fi
  plan_total=$(sed -n 's/^plan .* total \([0-9]*\) budget.*/\1/p' "$out")
  ram_used=$(sed -n 's/^ram stack-peak [0-9]* used \([0-9]*\) limit.*/\1/p' "$out")
  if [ -n "$plan_total" ] && [ "$plan_total" -le 262144 ] && [ -n "$ram_used" ] && [ "$ram_used" -le 262144 ]; then
    echo "mcu: $variant: RAM within 256 KiB: the plan's arena and weights $plan_total bytes; the firmware's static RAM and stack peak $ram_used bytes"
  else
    fail "$variant: RAM over 256 KiB or not reported: the plan's arena and weights '${plan_total}' bytes, the firmware's RAM '${ram_used}' bytes"
  fi
  grep -q '^heap before \([0-9]*\) after \1$' "$out" || fail "$variant: the heap's use changed while training (or was not printed)"
  d=$(paste -d' ' <(host_losses) <(fw_losses) | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%.3g", m }')
  same=$(paste -d' ' <(host_losses) <(fw_losses) | awk '$1 == $2 { s++ } END { print s + 0 }')
  if [ "$(host_losses | wc -l)" = "$steps" ] && awk -v d="$d" 'BEGIN { exit !(d <= 1e-5) }'; then
    echo "mcu: $variant: the firmware's $steps losses are within $d of the host's pock train --kernels reference (allowed 1e-5; $same equal bit for bit)"
  else
    fail "$variant: the firmware's losses differ from the host's by $d (allowed 1e-5)"
    paste <(host_losses) <(fw_losses) >&2
  fi
  train_ms=$(sed -n 's/^time [0-9]* steps \([0-9]*\) ms.*/\1/p' "$out")
  echo "mcu: $variant: emulated step time $(awk -v t="$train_ms" -v n="$steps" 'BEGIN { printf "%.1f", t / n }') ms ($train_ms ms for $steps steps by the host's clock through semihosting; qemu ran $run_s s in all, boot included)"
}

run_firmware f32
run_firmware int8
# Int8 training with QAS ends near float32 training (BENCHMARKS.md "Int8 training" has the figures).
if awk -v a="${last_mean[f32]}" -v b="${last_mean[int8]}" 'BEGIN { d = b - a; if (d < 0) d = -d; exit !(d <= 0.1) }'; then
  echo "mcu: int8 vs f32: last-epoch mean loss ${last_mean[int8]} vs ${last_mean[f32]} (allowed difference 0.1)"
else
  fail "int8 vs f32: last-epoch mean loss ${last_mean[int8]} vs ${last_mean[f32]}, more than 0.1 apart"
fi

part "everything" "$start"
[ "$failures" = 0 ] || die "$failures check(s) failed"
echo "mcu: the float32 and int8 firmwares trained in qemu-system-arm within 256 KiB of RAM and matched the host"
