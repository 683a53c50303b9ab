"""Reads the RESULT lines bench/peers.sh collected and prints the comparison: per model and
scheme, each system's median ms/step, peak RSS and trainable parameters, and pock's ratio to
each peer (pock ms / peer ms and pock RSS / peer RSS: below 1, pock is faster / smaller); with
several rounds (peers.sh --rounds), medians over the rounds and the range of the ratios.
Failed cases are listed with their reason; a trainable-parameter count that differs from pock's
is flagged (the frozen set would not be the same)."""

import json
import statistics
import sys

rows = [json.loads(line.split("RESULT ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("RESULT ")]
failures = list({(r["system"], r["model"], r["scheme"], r["error"]): r for r in rows if "error" in r}.values())
ok = [r for r in rows if "error" not in r]


def spread(values):
    """The median of `values`, with their range when there are several (one per round)."""
    m = statistics.median(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ({min(values):.2f}-{max(values):.2f})"


# With --rounds R every case has R rows, in round order: each system's ms/step is the median of
# its rounds, and pock's ratio to a peer the median of the rounds' ratios (round k of pock
# against round k of the peer, timed minutes apart at most).
rounds = max((sum(1 for q in ok if (q["model"], q["scheme"], q["system"]) == (r["model"], r["scheme"], r["system"])) for r in ok), default=1)
ms_head = "ms/step (median)" if rounds == 1 else f"ms/step (median of {rounds} rounds' medians)"
ratio_head = "pock ms ÷ peer" if rounds == 1 else "pock ms ÷ peer (median of rounds, range)"
print(f"| model | scheme | system | trainable / total params | {ms_head} | peak RSS MiB | {ratio_head} | pock RSS ÷ peer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
flags = []
firsts = []
for model in dict.fromkeys(r["model"] for r in ok):
    for scheme in dict.fromkeys(r["scheme"] for r in ok if r["model"] == model):
        case = [r for r in ok if r["model"] == model and r["scheme"] == scheme]
        runs = {}
        for r in case:
            runs.setdefault(r["system"], []).append(r)
        pock = runs.get("pock")
        for system, rs in runs.items():
            r = rs[0]
            firsts.append(r)
            t = r["trainable_params"]
            if pock and t != pock[0]["trainable_params"]:
                flags.append(f"{model}/{scheme}: {system} trains {t} parameters, pock {pock[0]['trainable_params']}")
            ratio = rss = ""
            if pock and system != "pock":
                ratio = spread([p["ms_median"] / q["ms_median"] for p, q in zip(pock, rs)])
                rss = f"{max(p['peak_rss_mib'] for p in pock) / max(q['peak_rss_mib'] for q in rs):.2f}"
            ms = statistics.median(q["ms_median"] for q in rs)
            peak = max(q["peak_rss_mib"] for q in rs)
            print(f"| {model} | {scheme} | {system} | {t:,} / {r['total_params']:,} | {ms:.1f} | {peak:.0f} | {ratio} | {rss} |")
print()
for r in firsts:
    if r["system"] == "pock":
        print(f"- pock {r['model']}/{r['scheme']}: `pock {r['compile']}`, arena {r['arena_mib']:.1f} MiB, "
              f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
modes = sorted({(r["system"], r.get("version", ""), r["batch_norm"], r["optimizer"]) for r in firsts})
for system, version, bn, optim in modes:
    print(f"- {system} {version}: BatchNorm {bn}; {optim}")
for f in flags:
    print(f"- MISMATCH {f}")
for r in failures:
    print(f"- FAILED {r['system']} {r['model']}/{r['scheme']}: {r['error']}")
