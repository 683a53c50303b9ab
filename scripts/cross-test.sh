#!/usr/bin/env bash
# Board binaries under emulation (issue 9, part 1): cross-builds `pock` and the engine's tests for
#   aarch64-unknown-linux-gnu      Raspberry Pi 4/5 with a 64-bit OS, Jetson, Android phones
#   armv7-unknown-linux-gnueabihf  Raspberry Pi OS 32-bit
# runs the engine's tests under qemu-user, compiles a small plan on the host and trains it with
# `pock train` on the host and on each emulated board, and compares the losses and the trained
# weights. Then builds the engine core without std for thumbv7em-none-eabihf (Cortex-M4F/M7).
# Prints how long each part takes; exits non-zero on the first failure.
#
# The compiler for the boards is Debian bookworm's rustc-web 1.96 (with a prebuilt arm64 std and
# the std sources for armv7 and Cortex-M, built with -Zbuild-std), not rustup's, which has only the
# x86_64 std here. The host's `pock` is built by the ordinary `cargo` in PATH.
#
# usage: scripts/cross-test.sh
#   POCK_CROSS_INSTALL=0   do not install packages (fail instead if one is missing)
#   POCK_CROSS_BOARDS="aarch64 armv7"   which boards to build and run (default both)
#   POCK_CROSS_THUMB=0     skip the thumbv7em-none-eabihf build
#   POCK_CROSS_TARGET_DIR  where the board builds go (default target/cross, kept apart from the
#                          host's target/ so the two compilers do not evict each other's builds)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export DEBIAN_FRONTEND=noninteractive
boards=${POCK_CROSS_BOARDS:-aarch64 armv7}
start=$SECONDS
part() { echo "== cross: $1 took $((SECONDS - $2)) s"; }
die() {
  echo "cross-test: $*" >&2
  exit 1
}

# ------------------------------------------------------------------------------------ packages
# The version of Debian's rustc; the arm64 std and the std sources must be exactly this version
# (a mismatch is error E0514 at build time).
t=$SECONDS
pkgs_for() {
  local v=$1
  echo "rustc-web=$v cargo-web=$v rust-web-src=$v libstd-rust-web-dev:arm64=$v"
  echo "gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static"
}
# Whether every package is installed (at the pinned version where one is given): then nothing is
# downloaded, not even the package index, so a second run spends no time here.
installed() {
  local p name want have
  for p in $(pkgs_for "$1"); do
    name=${p%%=*}
    want=${p#*=}
    have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null) || return 1
    case "$have" in "install ok installed "*) ;; *) return 1 ;; esac
    if [ "$want" != "$p" ] && [ "${have##* }" != "$want" ]; then return 1; fi
  done
}
have_version=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null || true)
if [ -n "$have_version" ] && installed "$have_version"; then
  echo "cross: Debian rustc-web $have_version and the cross toolchains are installed"
elif [ "${POCK_CROSS_INSTALL:-1}" = 0 ]; then
  die "rustc-web, its arm64 std, the cross gcc or qemu-user-static are missing and POCK_CROSS_INSTALL=0; run this script once without it (as root, or with sudo available)"
else
  # shellcheck source=scripts/apt.sh
  . scripts/apt.sh
  apt_prepare cross "install rustc 1.96+ with the std of aarch64 and the rust-src component, the aarch64 and armhf cross gcc and qemu-user by hand, then run it with POCK_CROSS_INSTALL=0"
  $sudo dpkg --add-architecture arm64
  apt_update cross
  v=$(apt-cache policy rustc-web | awk '/Candidate:/{print $2}')
  case "$v" in
    1.9[0-9]* | 1.[1-9][0-9][0-9]*) ;;
    *) die "Debian's rustc-web candidate is '$v', older than 1.90: enable bookworm-security in the apt sources" ;;
  esac
  # shellcheck disable=SC2046
  $sudo apt-get install -y -q --no-install-recommends $(pkgs_for "$v")
fi
part "toolchain packages (apt)" "$t"

# ------------------------------------------------------------------------------------ environment
# rustup's ~/.cargo/bin comes first in PATH: name Debian's compiler explicitly for every cross
# build (rustup's rustc has no std for these targets: error E0463).
cross_dir=${POCK_CROSS_TARGET_DIR:-$root/target/cross}
xcargo() { CARGO_TARGET_DIR=$cross_dir RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc /usr/bin/cargo "$@"; }
# Line tables only would double link times under no benefit here.
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
# With the arm64 libc installed through multiarch, its ld.so.cache entries win, and mixing them
# with the cross sysroot's loader deadlocks in pthread_create: use the multiarch root whole then.
if [ -e /lib/ld-linux-aarch64.so.1 ]; then aarch64_root=/; else aarch64_root=/usr/aarch64-linux-gnu; fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $aarch64_root"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"
/usr/bin/rustc --version

triple() {
  case "$1" in
    aarch64) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
    *) die "unknown board '$1' in POCK_CROSS_BOARDS (known: aarch64 armv7)" ;;
  esac
}
# Debian ships a prebuilt std for arm64 only; armv7 and Cortex-M build theirs from rust-web-src.
build_std() {
  case "$1" in
    aarch64) ;;
    *) echo "-Zbuild-std" ;;
  esac
}
# The board binary's cargo features: aarch64 (Jetson, Raspberry Pi 5, phones) keeps the default
# wgpu backend; the 32-bit armv7 build is CPU-only (`--no-default-features`), which saves CI about
# a minute and a half of building wgpu's ~60 crates a second time. `--backend wgpu` on it says how
# to rebuild.
features() {
  case "$1" in
    aarch64) ;;
    *) echo "--no-default-features" ;;
  esac
}
runner() {
  case "$1" in
    aarch64) echo "qemu-aarch64-static -L $aarch64_root" ;;
    armv7) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
  esac
}

# ------------------------------------------------------------------------------------ host plan
# A small CNN on the demo's generated shapes (fixed seed): conv, BatchNorm, ReLU, pooling, matmul,
# softmax cross-entropy and SGD with momentum, compiled once on the host; every board trains the
# same plan file.
t=$SECONDS
# The host's build, as `cargo test --workspace` made it in CI (nothing is compiled again).
# shellcheck source=scripts/host-pock.sh
. scripts/host-pock.sh
host_pock=$(host_pock_binary)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$host_pock" -q demo --epochs 1 --samples 128 --save-data "$work/data" >/dev/null
"$host_pock" -q compile zoo:cnn:channels=1,size=28,classes=4,width=8 --batch 16 --seed 3 --optimizer sgd --lr 0.05 --momentum 0.9 \
  --target rpi4 -o "$work/cnn.pock"
# Each run trains 2 epochs of 8 steps and writes its losses and its final weights.
train_on() { # name, kernels, command...
  local name=$1 kernels=$2
  shift 2
  "$@" -q train "$work/cnn.pock" --data "$work/data/train.npz" --epochs 2 --seed 5 --kernels "$kernels" \
    --log-json "$work/$name.$kernels.jsonl" --save "$work/$name.$kernels.safetensors" 2>"$work/$name.$kernels.stderr" >/dev/null
}
for k in reference fast; do train_on host "$k" "$host_pock"; done
part "host: build pock, compile zoo:cnn for rpi4, train it" "$t"

# The steps' losses of two runs, one per line, as printed (serde_json writes the shortest decimal
# that reads back to the same f32, so equal text is equal bits).
losses() { sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$1"; }
# A checkpoint's tensor bytes (parameters, statistics, optimizer state), after its JSON header:
# safetensors lays tensors out in a fixed order, while the header's metadata map is written in
# the order of a hash map, which differs from run to run.
ckpt_tensors() {
  local n
  n=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
  tail -c +$((9 + n)) "$1"
}
# The largest |a - b| over the two runs' losses.
max_loss_diff() { paste -d' ' <(losses "$1") <(losses "$2") | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { printf "%.3g", m }'; }

failures=0
for board in $boards; do
  tr=$(triple "$board")
  # shellcheck disable=SC2046
  bstd=$(build_std "$board")
  boot=""
  [ -n "$bstd" ] && boot=1

  t=$SECONDS
  # shellcheck disable=SC2086,SC2046
  RUSTC_BOOTSTRAP=$boot xcargo build --quiet --release --target "$tr" $bstd $(features "$board") -p pock --bin pock
  # shellcheck disable=SC2086
  RUSTC_BOOTSTRAP=$boot xcargo test --quiet --release --target "$tr" $bstd -p pock-engine --no-run
  part "$board: build pock and the engine's tests (release)" "$t"

  t=$SECONDS
  # cargo runs each test binary through the qemu runner set above.
  # shellcheck disable=SC2086
  RUSTC_BOOTSTRAP=$boot xcargo test --quiet --release --target "$tr" $bstd -p pock-engine
  part "$board: the engine's tests under qemu" "$t"

  t=$SECONDS
  board_pock="$cross_dir/$tr/release/pock"
  # shellcheck disable=SC2046
  for k in reference fast; do train_on "$board" "$k" $(runner "$board") "$board_pock"; done
  # Reference kernels: the same arithmetic in the same order on every ISA (Rust never fuses a
  # multiply and an add by itself), so losses and weights must be equal bit for bit.
  if cmp -s <(losses "$work/host.reference.jsonl") <(losses "$work/$board.reference.jsonl") &&
    [ "$(losses "$work/host.reference.jsonl" | wc -l)" = 16 ] &&
    cmp -s <(ckpt_tensors "$work/host.reference.safetensors") <(ckpt_tensors "$work/$board.reference.safetensors"); then
    echo "cross: $board reference kernels: 16 losses and the checkpoint tensors (weights, statistics, momentum) equal the host's bit for bit"
  else
    echo "cross: $board reference kernels: the losses or weights differ from the host's (largest loss difference $(max_loss_diff "$work/host.reference.jsonl" "$work/$board.reference.jsonl"))" >&2
    paste <(losses "$work/host.reference.jsonl") <(losses "$work/$board.reference.jsonl") >&2
    failures=$((failures + 1))
  fi
  # Fast kernels: gemm's microkernels differ per ISA (x86_64 AVX2/FMA, aarch64 NEON with fused
  # multiply-add, armv7 without), so sums are grouped and rounded differently: close, not equal.
  d=$(max_loss_diff "$work/host.fast.jsonl" "$work/$board.fast.jsonl")
  if awk -v d="$d" 'BEGIN { exit !(d <= 1e-5) }' && [ "$(losses "$work/$board.fast.jsonl" | wc -l)" = 16 ]; then
    echo "cross: $board fast (gemm) kernels: 16 losses within $d of the host's (allowed 1e-5)"
  else
    echo "cross: $board fast (gemm) kernels: losses differ from the host's by $d (allowed 1e-5)" >&2
    paste <(losses "$work/host.fast.jsonl") <(losses "$work/$board.fast.jsonl") >&2
    failures=$((failures + 1))
  fi
  # The plan was compiled for rpi4 (aarch64): the engine says so on every other ISA.
  if [ "$board" = aarch64 ]; then
    ! grep -q "built for" "$work/$board.fast.stderr" || { echo "cross: unexpected ISA warning on aarch64:" >&2; cat "$work/$board.fast.stderr" >&2; failures=$((failures + 1)); }
  else
    grep -q "built for" "$work/$board.fast.stderr" || { echo "cross: no ISA warning on $board for a plan built for rpi4" >&2; failures=$((failures + 1)); }
  fi
  part "$board: pock train under qemu (reference and fast kernels), compared with the host" "$t"
done

# ------------------------------------------------------------------------------------ Cortex-M
if [ "${POCK_CROSS_THUMB:-1}" != 0 ]; then
  t=$SECONDS
  RUSTC_BOOTSTRAP=1 xcargo build --quiet --release --lib --target thumbv7em-none-eabihf -Zbuild-std=core,alloc \
    -p pock-engine --no-default-features
  part "thumbv7em-none-eabihf: the engine core without std" "$t"
  # Its messages through defmt (issue 9, part 5), the microcontroller's logging.
  t=$SECONDS
  RUSTC_BOOTSTRAP=1 xcargo build --quiet --release --lib --target thumbv7em-none-eabihf -Zbuild-std=core,alloc \
    -p pock-engine --no-default-features --features defmt
  part "thumbv7em-none-eabihf: the engine core without std, with defmt" "$t"
fi

part "everything" "$start"
if [ "$failures" != 0 ]; then
  die "$failures comparison(s) with the host failed"
fi
echo "cross: all boards built, tested and matched the host"
