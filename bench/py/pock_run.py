"""pock's side of bench/peers.sh: compiles the zoo model (or, for `--model bert`, the ONNX file
`--onnx` that bert_peer_model.py wrote) for one scheme, trains it on the
generated data with `pock train --log-json`, and reports the median of the per-step times (the
`ms` of each step record: batch copy + train_step) after the warm-up steps, with the peak RSS of
the `pock train` process (ru_maxrss of the child: its VmHWM) and the trainable parameter count
from `pock inspect --json`. One RESULT line like the peers'."""

import json
import os
import statistics
import subprocess
import sys

import common

p = common.argparse.ArgumentParser(description=__doc__)
p.add_argument("--pock", required=True, help="the pock binary")
p.add_argument("--data", required=True, help=".npz with x [N,3,128,128] float32 and y int64 (bert: input_ids, "
               "attention_mask and y [N,128] int64)")
p.add_argument("--onnx", help="the model file for --model bert")
p.add_argument("--work", required=True, help="folder for the plan and the step log")
p.add_argument("--model", required=True, choices=["mobilenetv2", "resnet18", "bert"])
p.add_argument("--scheme", required=True)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch-norm", default="train", choices=["train", "frozen"])
# Everything else (--update bias, --train GLOB) goes to pock compile as the scheme.
args, scheme_flags = p.parse_known_args()

if args.model == "bert":
    if not args.onnx:
        common.fail("pock", args, "--model bert needs --onnx (bench/py/bert_peer_model.py onnx OUT.onnx writes it)")
    seq = f"{common.BATCH}x128"
    spec, model_flags = args.onnx, ["--input-shape", f"input_ids={seq}", "--input-shape", f"attention_mask={seq}"]
else:
    spec = f"zoo:{args.model}:classes={common.CLASSES},size={common.SIZE}"
    model_flags = ["--batch-norm", args.batch_norm]
plan = os.path.join(args.work, f"{args.model}-{args.scheme}.pock")
log = os.path.join(args.work, f"{args.model}-{args.scheme}.jsonl")
for f in (plan, log):
    if os.path.exists(f):
        os.remove(f)
compile_cmd = [args.pock, "compile", spec, "--batch", str(common.BATCH), "--optimizer", "sgd", "--lr", str(common.LR),
               "--momentum", str(common.MOMENTUM), *model_flags, *scheme_flags, "-o", plan]
print("+ " + " ".join(compile_cmd), file=sys.stderr, flush=True)
subprocess.run(compile_cmd, check=True)
info = json.loads(subprocess.run([args.pock, "inspect", plan, "--json"], check=True, capture_output=True, text=True).stdout)

import numpy  # noqa: E402

samples = numpy.load(args.data)["y"].shape[0]
per_epoch = samples // common.BATCH
epochs = -(-(args.warmup + args.steps) // per_epoch)
train_cmd = [args.pock, "train", plan, "--data", args.data, "--epochs", str(epochs), "--threads", str(args.threads),
             "--log-json", log, "--quiet"]
print("+ " + " ".join(train_cmd), file=sys.stderr, flush=True)
child = subprocess.Popen(train_cmd, stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: ru_maxrss is its VmHWM
child.returncode = os.waitstatus_to_exitcode(status)
if child.returncode != 0:
    common.fail("pock", args, f"pock train exited with {child.returncode}")
peak_kib = usage.ru_maxrss
records = [json.loads(line) for line in open(log)]
ms = [r["ms"] for r in records[args.warmup:args.warmup + args.steps]]
losses = [r["loss"] for r in records]
if len(ms) < args.steps:
    common.fail("pock", args, f"only {len(records)} steps logged, wanted {args.warmup + args.steps}")
trainable = info["trainable_params"]
total = info["trainable_params"] + info["frozen_params"]
rec = {
    "system": "pock", "model": args.model, "scheme": args.scheme,
    "ms_median": statistics.median(ms), "ms_min": min(ms), "steps": len(ms),
    "peak_rss_mib": peak_kib / 1024.0, "trainable_params": trainable, "total_params": total,
    "loss_first": losses[0], "loss_last": losses[-1],
    "batch_norm": "none (LayerNorm)" if args.model == "bert" else
    {"train": "train (batch statistics)", "frozen": "frozen (running statistics)"}[args.batch_norm],
    "optimizer": "SGD momentum 0.9", "arena_mib": info.get("arena_bytes", 0) / 2**20,
    "compile": " ".join(repr(a) if any(c in a for c in " *?[") else a for a in compile_cmd[1:]),
}
print("RESULT " + json.dumps(rec), flush=True)
