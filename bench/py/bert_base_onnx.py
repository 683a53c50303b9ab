"""Writes a 2-layer encoder of BERT-base's width as ONNX, for the reordering figures in
BENCHMARKS.md ("Memory" -> "Reordering: resnet18 at batch 1 and a 2-layer BERT").

It is tests/onnx/make_models.py's `Bert` (token and position embeddings, LayerNorm, 2 encoder
layers, a token-level head) with BERT-base's sizes: hidden 768, 12 heads, FFN 3072, vocabulary
30522, sequence 128. Weights are torch's random initialisation (seed 0): plan memory does not
depend on them. Needs torch (and onnx for the exporter).

    python bench/py/bert_base_onnx.py OUT.onnx BATCH
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "onnx"))
import make_models as m  # noqa: E402

m.VOCAB, m.HIDDEN, m.HEADS, m.SEQ, m.FFN, m.LAYERS = 30522, 768, 12, 128, 3072, 2

import torch  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, batch = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = m.Bert().eval()
    ids = torch.zeros(batch, m.SEQ, dtype=torch.long)
    mask = torch.ones(batch, m.SEQ, dtype=torch.long)
    torch.onnx.export(model, (ids, mask), out, dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
