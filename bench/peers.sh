#!/usr/bin/env bash
# The peer benchmark (issue 8 part 2): the same training step in pock, PyTorch, TensorFlow
# (tf.function and eager), ONNX Runtime training and burn (flex backend), side by side in one run.
#
#   bench/peers.sh [--steps N] [--warmup N] [--rounds R] [--models "mobilenetv2 resnet18 bert"]
#                  [--schemes "full bias paper"] [--systems "pock pytorch tf-function tf-eager ort burn"]
#
# --rounds R (default 1) runs every case R times, round after round, so that each round times
# all systems within a few minutes of each other: the table gives each system's median over the
# rounds and pock's ratio to each peer as the median of the rounds' ratios, with their range (a
# shared VM's speed drifts by up to 2x from one minute to the next).
#
# Model: torchvision's MobileNetV2 / ResNet-18, batch 8, 3x128x128, 10 classes, softmax
# cross-entropy, SGD lr 0.01 momentum 0.9, BatchNorm in training mode (batch statistics) in every
# system, 2 threads everywhere. `bert`: a 2-layer BERT encoder (bench/py/bert_peer_model.py:
# hidden 256, 4 heads, FFN 1024, vocabulary 8192), batch 8, sequence 128, token-level
# cross-entropy; pock trains its ONNX export, TensorFlow a Keras port, burn has no port (reported). Schemes (the same frozen set in every system, by torchvision
# parameter name; each system prints its trainable count and the table flags any difference):
#   full   every parameter trains
#   bias   every *.bias plus the classifier (pock --update bias)
#   paper  PockEngine-like sparse update with whole convs (pock --train GLOB...):
#          MobileNetV2: biases of blocks 7-18, the classifier, the first pointwise conv of blocks 14-17
#          ResNet-18:   biases of layer3 and layer4, fc, conv1 of both layer4 blocks
#          BERT:        every bias, the head, the last layer's first FFN weight
#
# Environment:
#   PEERS_PYTHON  a python with torch and torchvision already installed (else bench/.venv-torch
#                 is made and torch + torchvision installed from PyPI: about 3 GB with CUDA libs)
#   PEERS_OUT     output folder (default bench/out): results.jsonl, table.md, logs/
#   PEERS_POCK    a pock binary to time instead of building target/release/pock (its path is
#                 printed in the table's header)
#   PEERS_BURN_TARGET  cargo target folder of the burn peer (default bench/burn-peer/target)
# Made once and reused: bench/.venv-tf (tensorflow-cpu 2.21.0), bench/.venv-ort
# (onnxruntime-training 1.19.2 with onnx 1.16.2, which writes IR <= 10 as ORT 1.19 requires; torch
# comes from the torch python through a .pth file), bench/burn-peer/target (its cold build time
# is printed), target/release/pock.
#
# A system that cannot be set up or run is reported with the reason in the table's FAILED lines
# (and the script exits 1 at the end); it is never skipped silently.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
STEPS=10 WARMUP=3 THREADS=2 ROUNDS=1
MODELS="mobilenetv2 resnet18 bert"
SCHEMES="full bias paper"
SYSTEMS="pock pytorch tf-function tf-eager ort burn"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --schemes) SCHEMES="$2"; shift 2 ;;
    --systems) SYSTEMS="$2"; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "peers.sh: unknown argument $1 (see bench/peers.sh --help)" >&2; exit 2 ;;
  esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "peers.sh: --rounds takes a positive count, got '$ROUNDS'" >&2; exit 2 ;; esac
if [ "$STEPS" -lt 10 ]; then
  echo "peers.sh: note: --steps $STEPS is below the 10 timed steps the benchmark reports as a median" >&2
fi
OUT="${PEERS_OUT:-$HERE/out}"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
FAILED=0

# Threads wait passively: on a loaded machine (more runnable threads than cores) a spinning
# OpenMP pool is descheduled mid-spin and PyTorch's MobileNetV2 step went from 0.9 s to 19 s
# here (2026-12-04). OMP_WAIT_POLICY=PASSIVE for PyTorch/TensorFlow's OpenMP parts; ORT's own
# pool gets session.intra_op.allow_spinning=0 (ort_peer.py reads PEERS_NO_SPIN). Set
# OMP_WAIT_POLICY=ACTIVE PEERS_NO_SPIN=0 on a quiet machine to measure the spinning defaults.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PEERS_NO_SPIN="${PEERS_NO_SPIN:-1}"

log() { echo "[peers $(date +%H:%M:%S)] $*" >&2; }
# Records a failure of SYSTEM for MODEL/SCHEME ("*" for all) with the reason, as a RESULT line.
fail() {
  FAILED=1
  log "FAILED $1 $2/$3: $4"
  "$HOST_PY" -c 'import json,sys; print("RESULT " + json.dumps({"system": sys.argv[1], "model": sys.argv[2], "scheme": sys.argv[3], "error": sys.argv[4]}))' \
    "$1" "$2" "$3" "$4" >> "$RESULTS"
}
has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

HOST_PY="$(command -v python3)"
[ -n "$HOST_PY" ] || { echo "peers.sh: python3 is needed (to make the venvs)" >&2; exit 2; }

# ---- setup -------------------------------------------------------------------------------
TORCH_PY="${PEERS_PYTHON:-}"
if [ -z "$TORCH_PY" ]; then
  TORCH_PY="$HERE/.venv-torch/bin/python"
  if ! "$TORCH_PY" -c 'import torch, torchvision' 2>/dev/null; then
    log "making bench/.venv-torch (torch + torchvision from PyPI, about 3 GB; set PEERS_PYTHON to reuse an existing install)"
    "$HOST_PY" -m venv "$HERE/.venv-torch" && "$TORCH_PY" -m pip install -q torch torchvision numpy \
      > "$OUT/logs/setup-torch.log" 2>&1 || log "torch install failed: see $OUT/logs/setup-torch.log"
  fi
fi
TORCH_OK=1
if ! "$TORCH_PY" -c 'import torch, torchvision, numpy' > "$OUT/logs/setup-torch-check.log" 2>&1; then
  TORCH_OK=0
  fail pytorch '*' '*' "no torch/torchvision/numpy in $TORCH_PY ($(tail -1 "$OUT/logs/setup-torch-check.log"))"
fi
HOST_PY="$TORCH_PY"  # has numpy for the data and the table from here on (if TORCH_OK)
[ "$TORCH_OK" = 1 ] || HOST_PY="$(command -v python3)"

TF_PY="$HERE/.venv-tf/bin/python"
if has tf-function || has tf-eager; then
  if ! "$TF_PY" -c 'import tensorflow' 2>/dev/null; then
    log "making bench/.venv-tf (tensorflow-cpu 2.21.0)"
    "$HOST_PY" -m venv --clear "$HERE/.venv-tf" && "$TF_PY" -m pip install -q tensorflow-cpu==2.21.0 \
      > "$OUT/logs/setup-tf.log" 2>&1
  fi
  if ! "$TF_PY" -c 'import tensorflow' > "$OUT/logs/setup-tf-check.log" 2>&1; then
    for s in tf-function tf-eager; do has $s && fail "tensorflow-${s#tf-}" '*' '*' \
      "tensorflow-cpu 2.21.0 not importable in bench/.venv-tf: $(tail -1 "$OUT/logs/setup-tf-check.log")"; done
    SYSTEMS="${SYSTEMS//tf-function/}"; SYSTEMS="${SYSTEMS//tf-eager/}"
  fi
fi

ORT_PY="$HERE/.venv-ort/bin/python"
if has ort; then
  if ! "$ORT_PY" -c 'import onnxruntime.training, onnx, torch' 2>/dev/null; then
    log "making bench/.venv-ort (onnxruntime-training 1.19.2, onnx 1.16.2; torch from $TORCH_PY)"
    # The venv uses the torch python's interpreter; a .pth file appends the torch python's
    # site-packages after the venv's own, so the venv's onnx 1.16.2 and onnxruntime-training win.
    base="$("$TORCH_PY" -c 'import sys; print(sys.base_prefix)')/bin/python3"
    site="$("$TORCH_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$base" -m venv --clear "$HERE/.venv-ort" \
      && echo "$site" > "$("$ORT_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/peers-torch.pth" \
      && "$ORT_PY" -m pip install -q onnxruntime-training==1.19.2 onnx==1.16.2 > "$OUT/logs/setup-ort.log" 2>&1
  fi
  if ! "$ORT_PY" -c 'import onnxruntime.training, onnx, torch' > "$OUT/logs/setup-ort-check.log" 2>&1; then
    fail onnxruntime-training '*' '*' "bench/.venv-ort cannot import onnxruntime.training, onnx and torch: $(tail -1 "$OUT/logs/setup-ort-check.log")"
    SYSTEMS="${SYSTEMS//ort/}"
  fi
fi

BURN_TARGET="${PEERS_BURN_TARGET:-$HERE/burn-peer/target}"
BURN="$BURN_TARGET/release/burn-peer"
if has burn; then
  cold=cold; [ -d "$BURN_TARGET/release" ] && cold=incremental
  start=$(date +%s)
  if (cd "$HERE/burn-peer" && CARGO_TARGET_DIR="$BURN_TARGET" cargo build --release) > "$OUT/logs/build-burn.log" 2>&1; then
    log "burn-peer build ($cold): $(( $(date +%s) - start )) s"
    echo "burn-peer build ($cold): $(( $(date +%s) - start )) s" > "$OUT/burn-build.txt"
  else
    fail burn-flex '*' '*' "cargo build --release in bench/burn-peer failed: $(grep -m1 '^error' "$OUT/logs/build-burn.log")"
    SYSTEMS="${SYSTEMS//burn/}"
  fi
fi

POCK="${PEERS_POCK:-$ROOT/target/release/pock}"
if has pock; then
  if [ -n "${PEERS_POCK:-}" ]; then
    [ -x "$POCK" ] || { echo "peers.sh: PEERS_POCK=$POCK is not an executable" >&2; exit 2; }
    log "pock: $POCK (PEERS_POCK), not rebuilt"
  elif ! (cd "$ROOT" && cargo build --release -p pock) > "$OUT/logs/build-pock.log" 2>&1; then
    fail pock '*' '*' "cargo build --release -p pock failed: $(grep -m1 '^error' "$OUT/logs/build-pock.log")"
    SYSTEMS="${SYSTEMS//pock/}"
  fi
  DATA="$OUT/data.npz"
  # Two batches: pock train holds its whole dataset in memory, and the peers hold one batch, so
  # a small file keeps the RSS comparison about the step (epochs repeat it; steps are timed alone).
  n=16
  "$HOST_PY" -c "import numpy as np, sys; r = np.random.default_rng(1); np.savez(sys.argv[1], x=r.standard_normal(($n, 3, 128, 128), dtype=np.float32), y=(np.arange($n) % 10).astype(np.int64))" "$DATA" \
    || { fail pock '*' '*' "could not write $DATA with numpy ($HOST_PY)"; SYSTEMS="${SYSTEMS//pock/}"; }
  case " $MODELS " in *" bert "*)
    BERT_ONNX="$OUT/bert.onnx" BERT_DATA="$OUT/bert-data.npz"
    if ! { "$TORCH_PY" "$HERE/py/bert_peer_model.py" onnx "$BERT_ONNX" && "$TORCH_PY" "$HERE/py/bert_peer_model.py" data "$BERT_DATA" 16; } \
        > "$OUT/logs/setup-bert.log" 2>&1; then
      fail pock bert '*' "could not export the BERT encoder with $TORCH_PY: $(tail -1 "$OUT/logs/setup-bert.log")"
      BERT_ONNX=""
    fi ;;
  esac
fi

# ---- the scheme of each model, as pock flags and as globs for the peers -----------------------
scheme_flags() {  # MODEL SCHEME -> pock compile flags
  case "$1/$2" in
    */full) echo "--update full" ;;
    */bias) echo "--update bias" ;;
    mobilenetv2/paper) echo "--train features.[7-9].*.bias --train features.1[0-8].*.bias --train classifier.* --train features.1[4-7].conv.0.0.weight" ;;
    resnet18/paper) echo "--train layer[34].*.bias --train fc.* --train layer4.*.conv1.weight" ;;
    bert/paper) echo "--train *.bias --train head.* --train layers.1.ffn1.weight" ;;
    *) return 1 ;;
  esac
}
peer_globs() {  # MODEL SCHEME -> --train GLOB flags for the peers (the same parameters)
  case "$1/$2" in
    */full) echo "" ;;
    mobilenetv2/bias) echo "--train *.bias --train classifier.*" ;;
    resnet18/bias) echo "--train *.bias --train fc.*" ;;
    bert/bias) echo "--train *.bias --train head.*" ;;
    */paper) scheme_flags "$1" "$2" ;;
    *) return 1 ;;
  esac
}

# Runs one case; its RESULT line goes to results.jsonl, everything else to logs/.
run_case() {  # SYSTEM-LABEL MODEL SCHEME COMMAND...
  local label="$1" model="$2" scheme="$3"; shift 3
  local logf="$OUT/logs/$label-$model-$scheme.log"
  [ "$ROUNDS" -gt 1 ] && logf="$OUT/logs/$label-$model-$scheme-round$ROUND.log"
  log "$label $model/$scheme$([ "$ROUNDS" -gt 1 ] && echo " (round $ROUND of $ROUNDS)")"
  "$@" > "$logf.out" 2> "$logf"
  local rc=$?
  if grep -q '^RESULT ' "$logf.out"; then
    grep '^RESULT ' "$logf.out" >> "$RESULTS"
    grep -q '"error"' "$logf.out" && FAILED=1
  else
    fail "$label" "$model" "$scheme" "exited $rc without a result; last line of $logf: $(tail -1 "$logf")"
  fi
}

set -f  # the globs are passed as words, never expanded by the shell
COMMON=(--steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
for ROUND in $(seq "$ROUNDS"); do
for model in $MODELS; do
  for scheme in $SCHEMES; do
    flags=$(scheme_flags "$model" "$scheme") || { echo "peers.sh: unknown model/scheme $model/$scheme" >&2; exit 2; }
    globs=$(peer_globs "$model" "$scheme")
    if [ "$model" = bert ]; then
      has pock && [ -n "${BERT_ONNX:-}" ] && run_case pock "$model" "$scheme" "$HOST_PY" "$HERE/py/pock_run.py" --pock "$POCK" \
        --data "$BERT_DATA" --onnx "$BERT_ONNX" --work "$OUT" --model bert --scheme "$scheme" "${COMMON[@]}" $flags
    else
      has pock && run_case pock "$model" "$scheme" "$HOST_PY" "$HERE/py/pock_run.py" --pock "$POCK" --data "$DATA" \
        --work "$OUT" --model "$model" --scheme "$scheme" "${COMMON[@]}" --batch-norm train $flags
    fi
    has pytorch && [ "$TORCH_OK" = 1 ] && run_case pytorch "$model" "$scheme" "$TORCH_PY" "$HERE/py/torch_peer.py" \
      --model "$model" --scheme "$scheme" "${COMMON[@]}" $globs
    for mode in function eager; do
      has "tf-$mode" && run_case "tensorflow-$mode" "$model" "$scheme" "$TF_PY" "$HERE/py/tf_peer.py" --mode "$mode" \
        --model "$model" --scheme "$scheme" "${COMMON[@]}" $globs
    done
    has ort && run_case onnxruntime-training "$model" "$scheme" "$ORT_PY" "$HERE/py/ort_peer.py" \
      --model "$model" --scheme "$scheme" "${COMMON[@]}" $globs
    if has burn && [ "$model" = bert ]; then
      fail burn-flex bert "$scheme" "bench/burn-peer has no BERT encoder (only MobileNetV2 and ResNet-18 are ported)"
    elif has burn; then
      run_case burn-flex "$model" "$scheme" "$BURN" --model "$model" --scheme "$scheme" "${COMMON[@]}" $globs
    fi
  done
done
done
set +f

# ---- the table ----------------------------------------------------------------------------
{
  echo "peers.sh on $(uname -m), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end, $(date -u +%Y-%m-%dT%H:%MZ)"
  has pock && echo "pock: $POCK"
  echo "median of $STEPS steps after $WARMUP warm-up steps, $ROUNDS round(s), $THREADS threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY PEERS_NO_SPIN=$PEERS_NO_SPIN, nice $(nice); $(cat "$OUT/burn-build.txt" 2>/dev/null)"
  echo
  "$HOST_PY" "$HERE/py/table.py" "$RESULTS"
} | tee "$OUT/table.md"
grep -q '"error"' "$RESULTS" && FAILED=1
exit $FAILED
