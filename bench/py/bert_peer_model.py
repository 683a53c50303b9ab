"""The 2-layer BERT encoder of bench/peers.sh (`--models bert`): tests/onnx/make_models.py's `Bert`
(token and position embeddings, LayerNorm, 2 post-norm encoder layers with GELU, a token-level
head) at a small BERT's width: hidden 256, 4 heads, FFN 1024, sequence 128, vocabulary 8192
(BERT's 30522 would make the head's product, not the encoder, most of the step). Batch 8,
token-level cross-entropy over every position, SGD momentum 0.9. Needs torch.

    python bench/py/bert_peer_model.py onnx OUT.onnx     # the model for pock (logits [B, T, V])
    python bench/py/bert_peer_model.py data OUT.npz N    # N samples: input_ids, attention_mask, y [N, T]
"""

import os
import sys

import numpy as np

VOCAB, HIDDEN, HEADS, SEQ, FFN, LAYERS = 8192, 256, 4, 128, 1024, 2


def model():
    """The encoder (torch), torch's random initialisation with seed 0. TensorFlow's port is in
    tf_peer.py (`KerasBert`), with the same layer names."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "onnx"))
    import make_models as m
    import torch

    m.VOCAB, m.HIDDEN, m.HEADS, m.SEQ, m.FFN, m.LAYERS = VOCAB, HIDDEN, HEADS, SEQ, FFN, LAYERS
    torch.manual_seed(0)
    return m.Bert()


def batch(n, seed=1):
    """`n` samples: token ids in [0, VOCAB), an all-ones attention mask, one label per position."""
    r = np.random.default_rng(seed)
    ids = r.integers(0, VOCAB, size=(n, SEQ), dtype=np.int64)
    mask = np.ones((n, SEQ), dtype=np.int64)
    labels = r.integers(0, VOCAB, size=(n, SEQ), dtype=np.int64)
    return ids, mask, labels


def export(net, path, batch_size, flat=False, training=False, opset=17):
    """ONNX of `net` for a batch of `batch_size`; `flat` reshapes the logits to [B*T, V] (the
    layout ONNX Runtime training's cross-entropy artifact takes)."""
    import torch

    ids = torch.zeros(batch_size, SEQ, dtype=torch.long)
    mask = torch.ones(batch_size, SEQ, dtype=torch.long)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    if flat:  # on the instance, so that the parameters keep their names (no wrapper's prefix)
        inner = net.forward
        net.forward = lambda ids, mask: inner(ids, mask).reshape(-1, VOCAB)
    torch.onnx.export(net, (ids, mask), path, dynamo=False, opset_version=opset, training=mode,
                      do_constant_folding=False, input_names=["input_ids", "attention_mask"], output_names=["logits"])


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "onnx":
        export(model().eval(), sys.argv[2], 8)
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "data":
        ids, mask, labels = batch(int(sys.argv[3]))
        np.savez(sys.argv[2], input_ids=ids, attention_mask=mask, y=labels)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
