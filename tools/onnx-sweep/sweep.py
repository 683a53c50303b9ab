#!/usr/bin/env python3
"""Exports models pock has no fixture for with torch, and checks pock against ONNX Runtime on them.

Usage (needs torch, torchvision, onnx, onnxruntime, numpy, and transformers for the hf_* models;
onnxscript for `--exporter dynamo`; not part of CI: torch is ~3 GB):

    python tools/onnx-sweep/sweep.py --pock target/release/pock [--out DIR] [MODEL ...]

For each model it exports two graphs with the TorchScript exporter (opset 17; `--exporter dynamo` for
torch's newer exporter):
- training mode (`model.train()`, BatchNorm on batch statistics), which pock compiles and runs
  one training step of (`pock bench --steps 1`);
- inference mode (`model.eval()`), which pock compiles and runs with `pock infer` on random
  inputs, compared with ONNX Runtime's outputs for the same graph (max |difference|, and the
  largest |output| for scale).
It prints one line per model; a model that pock cannot import prints pock's error. With no MODEL
arguments it runs them all.
"""

import argparse
import os
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torchvision

warnings.filterwarnings("ignore")
M = torchvision.models


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16)
        self.c2, self.pool, self.fc = nn.Conv1d(16, 16, 3, stride=2), nn.MaxPool1d(2), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))).mean(-1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.emb, self.enc, self.fc = nn.Embedding(100, 32), nn.TransformerEncoder(layer, 2), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.enc(self.emb(x)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        cell = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn, self.fc = cell(8, 16, num_layers=2, batch_first=True, bidirectional=True), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class Segmentation(nn.Module):
    """A torchvision segmentation model's "out" map (bilinear Resize back to the input size)."""

    def __init__(self, make):
        super().__init__()
        self.model = make(num_classes=3, weights_backbone=None)

    def forward(self, x):
        return self.model(x)["out"]


class HuggingFace(nn.Module):
    """A transformers model built from a tiny config (random weights, nothing downloaded), called
    on token ids (or pixels, `vision`) and returning its logits (or an encoder's pooled states)."""

    def __init__(self, kind):
        super().__init__()
        import transformers as T

        text = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        self.kind = kind
        if kind == "bert":
            self.m = T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_labels=3, **text))
        elif kind == "roberta":
            self.m = T.RobertaForSequenceClassification(T.RobertaConfig(hidden_size=32, num_labels=3, max_position_embeddings=40, **text))
        elif kind == "distilbert":
            self.m = T.DistilBertForSequenceClassification(T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3))
        elif kind == "gpt2":
            self.m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=40))
        elif kind == "llama":
            self.m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_key_value_heads=2, max_position_embeddings=40, **text))
        elif kind == "vit":
            self.m = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_labels=3, **{k: v for k, v in text.items() if k != "vocab_size"}))
        else:
            raise ValueError(kind)

    def forward(self, x):
        return self.m(pixel_values=x).logits if self.kind == "vit" else self.m(input_ids=x).logits


IMAGE = (2, 3, 64, 64)
MODELS = {
    "mnasnet0_5": (lambda: M.mnasnet0_5(num_classes=10), IMAGE),
    "regnet_x_400mf": (lambda: M.regnet_x_400mf(num_classes=10), IMAGE),
    "googlenet": (lambda: M.googlenet(num_classes=10, aux_logits=False, init_weights=True), IMAGE),
    "densenet121": (lambda: M.densenet121(num_classes=10), IMAGE),
    "mobilenet_v3_large": (lambda: M.mobilenet_v3_large(num_classes=10), IMAGE),
    "efficientnet_v2_s": (lambda: M.efficientnet_v2_s(num_classes=10), IMAGE),
    "convnext_tiny": (lambda: M.convnext_tiny(num_classes=10), IMAGE),
    "resnext50_32x4d": (lambda: M.resnext50_32x4d(num_classes=10), IMAGE),
    "swin_t": (lambda: M.swin_t(num_classes=10), IMAGE),
    "lraspp_mobilenet_v3_large": (lambda: Segmentation(M.segmentation.lraspp_mobilenet_v3_large), IMAGE),
    "fcn_resnet50": (lambda: Segmentation(M.segmentation.fcn_resnet50), IMAGE),
    "vit_tiny": (
        lambda: M.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10),
        (2, 3, 32, 32),
    ),
    "squeezenet1_1": (lambda: M.squeezenet1_1(num_classes=10), IMAGE),
    "shufflenet_v2_x0_5": (lambda: M.shufflenet_v2_x0_5(num_classes=10), IMAGE),
    "efficientnet_b0": (lambda: M.efficientnet_b0(num_classes=10), IMAGE),
    "deeplabv3_mobilenet_v3_large": (lambda: Segmentation(M.segmentation.deeplabv3_mobilenet_v3_large), IMAGE),
    "transformer_encoder": (Encoder, None),
    # transformers models (skipped with a message where transformers is not installed)
    "hf_bert": (lambda: HuggingFace("bert"), None),
    "hf_roberta": (lambda: HuggingFace("roberta"), None),
    "hf_distilbert": (lambda: HuggingFace("distilbert"), None),
    "hf_gpt2": (lambda: HuggingFace("gpt2"), None),
    "hf_llama": (lambda: HuggingFace("llama"), None),
    "hf_vit": (lambda: HuggingFace("vit"), (2, 3, 32, 32)),
    "conv1d": (Conv1dNet, (2, 4, 50)),
    "lstm": (lambda: Recurrent("lstm"), (2, 7, 8)),
    "gru": (lambda: Recurrent("gru"), (2, 7, 8)),
}


def export(model, x, path, train, exporter):
    model.train() if train else model.eval()
    if exporter == "dynamo":
        # torch's default exporter from 2.9 on (needs onnxscript): opset 18, its own op patterns.
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, verbose=False)
        return
    mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(model, (x,), path, opset_version=17, training=mode, do_constant_folding=False, dynamo=False)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pock", required=True, help="the pock binary")
    ap.add_argument("--out", default="onnx-sweep", help="working directory for the exports (default: ./onnx-sweep)")
    ap.add_argument(
        "--exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="torch.onnx.export's TorchScript exporter at opset 17 (default) or the dynamo one (torch's default since 2.9)",
    )
    ap.add_argument("models", nargs="*", help=f"models to run (default: all of {', '.join(MODELS)})")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    failed = 0
    for name in a.models or MODELS:
        make, shape = MODELS[name]
        try:
            model = make()
        except ImportError as e:
            print(f"{name:22} SKIPPED: {e} (pip install transformers)", flush=True)
            continue
        # Zero-initialised heads (torchvision's ViT) would make every output 0 and the
        # comparison empty.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 0.02)
        x = torch.randint(0, 100, (2, 12)) if shape is None else torch.randn(*shape)
        base = os.path.join(a.out, name)
        try:
            export(model, x, base + ".train.onnx", True, a.exporter)
            export(model, x, base + ".eval.onnx", False, a.exporter)
        except Exception as e:  # an exporter failure is torch's, not pock's: report and go on
            print(f"{name:22} EXPORT FAILED ({a.exporter}): {str(e).splitlines()[0][:200]}", flush=True)
            continue
        # A dense output (segmentation maps) trains with MSE against a map of its shape.
        loss = ["--loss", "mse"] if len(model(x).shape) > 2 else []
        code, err = run([a.pock, "compile", base + ".train.onnx", "-o", base + ".train.pock", "-q", *loss])
        if code == 0:
            code, err = run([a.pock, "bench", base + ".train.pock", "--steps", "1", "--warmup", "0", "-q"])
        train = "trains" if code == 0 else f"train FAILED: {err}"
        xs = x.numpy()
        want = ort.InferenceSession(base + ".eval.onnx").run(None, {ort.InferenceSession(base + ".eval.onnx").get_inputs()[0].name: xs})[0]
        np.savez(base + ".in.npz", x=xs, y=np.zeros(xs.shape[0], np.int64))
        code, err = run([a.pock, "compile", base + ".eval.onnx", "-o", base + ".eval.pock", "-q", *loss])
        if code == 0:
            code, err = run([a.pock, "infer", base + ".eval.pock", "--data", base + ".in.npz", "--out", base + ".out.npz", "-q"])
        if code == 0:
            got = np.load(base + ".out.npz")["y"].reshape(want.shape)
            diff = float(np.abs(got - want).max())
            scale = float(np.abs(want).max())
            ok = diff <= 1e-4 * max(1.0, scale)
            forward = f"forward max |diff| {diff:.2e} (max |output| {scale:.2e}){'' if ok else ' MISMATCH'}"
        else:
            ok, forward = False, f"forward FAILED: {err}"
        failed += (not ok) or train != "trains"
        print(f"{name:22} {train}; {forward}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
