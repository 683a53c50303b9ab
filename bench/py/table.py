"""Reads the RESULT lines bench/peers.sh collected and prints the comparison: per model and
scheme, each system's median ms/step, peak RSS and trainable parameters, and pock's ratio to
each peer (pock ms / peer ms and pock RSS / peer RSS: below 1, pock is faster / smaller).
Failed cases are listed with their reason; a trainable-parameter count that differs from pock's
is flagged (the frozen set would not be the same)."""

import json
import sys

rows = [json.loads(line.split("RESULT ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("RESULT ")]
failures = [r for r in rows if "error" in r]
ok = [r for r in rows if "error" not in r]
print("| model | scheme | system | trainable / total params | ms/step (median) | peak RSS MiB | pock ms ÷ peer | pock RSS ÷ peer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
flags = []
for model in dict.fromkeys(r["model"] for r in ok):
    for scheme in dict.fromkeys(r["scheme"] for r in ok if r["model"] == model):
        case = [r for r in ok if r["model"] == model and r["scheme"] == scheme]
        pock = next((r for r in case if r["system"] == "pock"), None)
        for r in case:
            t = r["trainable_params"]
            if pock and t != pock["trainable_params"]:
                flags.append(f"{model}/{scheme}: {r['system']} trains {t} parameters, pock {pock['trainable_params']}")
            ratio = rss = ""
            if pock and r is not pock:
                ratio = f"{pock['ms_median'] / r['ms_median']:.2f}"
                rss = f"{pock['peak_rss_mib'] / r['peak_rss_mib']:.2f}"
            print(f"| {model} | {scheme} | {r['system']} | {t:,} / {r['total_params']:,} | {r['ms_median']:.1f} | "
                  f"{r['peak_rss_mib']:.0f} | {ratio} | {rss} |")
print()
for r in ok:
    if r["system"] == "pock":
        print(f"- pock {r['model']}/{r['scheme']}: `pock {r['compile']}`, arena {r['arena_mib']:.1f} MiB, "
              f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
modes = sorted({(r["system"], r.get("version", ""), r["batch_norm"], r["optimizer"]) for r in ok})
for system, version, bn, optim in modes:
    print(f"- {system} {version}: BatchNorm {bn}; {optim}")
for f in flags:
    print(f"- MISMATCH {f}")
for r in failures:
    print(f"- FAILED {r['system']} {r['model']}/{r['scheme']}: {r['error']}")
