"""Shared by the Python peers of bench/peers.sh: arguments, the frozen set, timing, peak RSS.

Every peer process runs one (model, scheme) and prints one line `RESULT {json}`; peers.sh
collects them into the table. One process per case, so VmHWM is that case's peak RSS.
"""

import argparse
import fnmatch
import json
import statistics
import sys
import time

BATCH, CHANNELS, SIZE, CLASSES = 8, 3, 128, 10
LR, MOMENTUM = 0.01, 0.9


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, choices=["mobilenetv2", "resnet18", "bert"])
    p.add_argument("--scheme", required=True, help="label of the frozen set (full, bias, paper)")
    p.add_argument("--train", action="append", default=[],
                   help="glob over torchvision parameter names that train (repeatable); none: all train")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", default="", help="peer-specific mode (TensorFlow: function or eager)")
    return p.parse_args()


def trains(name, globs):
    """Whether the torchvision-named parameter `name` trains under `globs` (no globs: all do).
    Same globs as pock's --train: `*` also matches dots, `[7-9]`, `[!0]`, `?`."""
    return not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def time_steps(step, warmup, steps):
    """Runs `step` warmup times untimed, then `steps` times timed; returns the ms list and the
    losses (the first and last, to show that training happens)."""
    losses = []
    for _ in range(warmup):
        losses.append(float(step()))
    ms = []
    for _ in range(steps):
        t = time.perf_counter()
        losses.append(float(step()))
        ms.append((time.perf_counter() - t) * 1e3)
    return ms, losses


def report(system, args, ms, losses, trainable, total, extra=None):
    rec = {
        "system": system,
        "model": args.model,
        "scheme": args.scheme,
        "ms_median": statistics.median(ms),
        "ms_min": min(ms),
        "steps": len(ms),
        "peak_rss_mib": peak_rss_mib(),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    rec.update(extra or {})
    print("RESULT " + json.dumps(rec), flush=True)


def fail(system, args, why):
    """Says why a peer could not run this case, as a result line, and exits non-zero."""
    print("RESULT " + json.dumps({"system": system, "model": args.model, "scheme": args.scheme, "error": why}), flush=True)
    sys.exit(1)
