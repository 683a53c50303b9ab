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


class Volumes(nn.Module):
    """Conv3d, BatchNorm3d, MaxPool3d, AvgPool3d and global pooling on a small video clip."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 8, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.BatchNorm3d(8), nn.ReLU())
        self.pool = nn.MaxPool3d(2, padding=(1, 0, 0))
        self.block = nn.Sequential(nn.Conv3d(8, 16, 3, padding=1, groups=2), nn.BatchNorm3d(16), nn.ReLU(), nn.AvgPool3d((1, 2, 2)))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool3d(self.block(self.pool(self.stem(x))), 1).flatten(1))


class Legacy(nn.Module):
    """GoogLeNet-era ops: LocalResponseNorm (odd size, where ONNX's window is PyTorch's)."""

    def __init__(self):
        super().__init__()
        self.c1, self.lrn, self.c2, self.fc = nn.Conv2d(3, 16, 5, stride=2), nn.LocalResponseNorm(5), nn.Conv2d(16, 16, 3), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(self.lrn(torch.relu(self.c1(x))))).mean((2, 3)))


class UNetish(nn.Module):
    """GroupNorm, InstanceNorm, SiLU, GELU, ConvTranspose2d, dilation, PixelShuffle and resizes."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.InstanceNorm2d(16, affine=True), nn.GELU()
        )
        self.up, self.dilated, self.shuffle, self.head = nn.ConvTranspose2d(16, 8, 2, stride=2), nn.Conv2d(8, 12, 3, padding=2, dilation=2), nn.PixelShuffle(2), nn.Conv2d(3, 1, 1)

    def forward(self, x):
        h = self.down(x)
        h = self.up(h) + nn.functional.interpolate(h[:, :8], scale_factor=2.0, mode="nearest")
        h = nn.functional.avg_pool2d(self.shuffle(self.dilated(h)), 2)
        return self.head(nn.functional.interpolate(h, size=x.shape[2:], mode="bilinear", align_corners=False))


class Mixer(nn.Module):
    """An MLP-Mixer block: patch embedding, token mixing across patches, LayerNorm, tanh GELU."""

    def __init__(self):
        super().__init__()
        self.embed, self.n1, self.tokens, self.n2 = nn.Conv2d(3, 16, 8, stride=8), nn.LayerNorm(16), nn.Linear(64, 64), nn.LayerNorm(16)
        self.channels, self.fc = nn.Sequential(nn.Linear(16, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 16)), nn.Linear(16, 10)

    def forward(self, x):
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = h + self.tokens(self.n1(h).transpose(1, 2)).transpose(1, 2)
        return self.fc((h + self.channels(self.n2(h))).mean(1))


class HuggingFace(nn.Module):
    """A transformers model built from a tiny config (random weights, nothing downloaded), called
    on token ids (or pixels, `vision`, or a waveform, `audio`) and returning its logits (or an
    encoder's last hidden states)."""

    def __init__(self, kind):
        super().__init__()
        import transformers as T

        text = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        layers = {k: v for k, v in text.items() if k != "vocab_size"}
        decoder = dict(hidden_size=32, num_key_value_heads=2, max_position_embeddings=40, **text)
        stages = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=3)
        self.input = "pixel_values" if kind in VISION else "input_values" if kind == "wav2vec2" else "input_ids"
        make = {
            "bert": lambda: T.BertForSequenceClassification(T.BertConfig(hidden_size=32, num_labels=3, **text)),
            "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(hidden_size=32, num_labels=3, max_position_embeddings=40, **text)),
            "distilbert": lambda: T.DistilBertForSequenceClassification(
                T.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3)
            ),
            "albert": lambda: T.AlbertForSequenceClassification(T.AlbertConfig(hidden_size=32, embedding_size=16, num_labels=3, **text)),
            "electra": lambda: T.ElectraForSequenceClassification(T.ElectraConfig(hidden_size=32, embedding_size=16, num_labels=3, **text)),
            "deberta_v2": lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(hidden_size=32, num_labels=3, **text)),
            "mobilebert": lambda: T.MobileBertForSequenceClassification(
                T.MobileBertConfig(hidden_size=32, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_labels=3, **text)
            ),
            "t5_encoder": lambda: T.T5EncoderModel(T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)),
            "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=40)),
            "gpt_neo": lambda: T.GPTNeoForCausalLM(
                T.GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8, max_position_embeddings=40)
            ),
            "opt": lambda: T.OPTForCausalLM(
                T.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=40, word_embed_proj_dim=32)
            ),
            "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)),
            "phi": lambda: T.PhiForCausalLM(T.PhiConfig(hidden_size=32, max_position_embeddings=40, **text)),
            "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder)),
            "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**decoder)),
            "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**decoder)),
            "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(head_dim=8, **decoder)),
            "vit": lambda: T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_labels=3, **layers)),
            "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_labels=3, **layers)),
            "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(**stages)),
            "resnet": lambda: T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, **stages)),
            # Stochastic depth (drop_path_rate 0.1 by default): floor(keep + uniform) in training.
            "segformer": lambda: T.SegformerForImageClassification(T.SegformerConfig(decoder_hidden_size=16, **stages)),
            # SpecAugment's time masks (mask_time_prob) have a data-dependent shape (NonZero);
            # fine-tuning without them imports.
            "wav2vec2": lambda: T.Wav2Vec2ForSequenceClassification(
                T.Wav2Vec2Config(
                    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2),
                    conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_labels=3, classifier_proj_size=16,
                    mask_time_prob=0.0,
                )
            ),
        }
        if kind not in make:
            raise ValueError(kind)
        self.m = make[kind]()

    def forward(self, x):
        out = self.m(**{self.input: x})
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


VISION = {"vit", "deit", "convnext", "resnet", "segformer"}


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
    "hf_albert": (lambda: HuggingFace("albert"), None),
    "hf_electra": (lambda: HuggingFace("electra"), None),
    "hf_deberta_v2": (lambda: HuggingFace("deberta_v2"), None),
    "hf_mobilebert": (lambda: HuggingFace("mobilebert"), None),
    "hf_t5_encoder": (lambda: HuggingFace("t5_encoder"), None),
    "hf_gpt2": (lambda: HuggingFace("gpt2"), None),
    "hf_gpt_neo": (lambda: HuggingFace("gpt_neo"), None),
    "hf_opt": (lambda: HuggingFace("opt"), None),
    "hf_bloom": (lambda: HuggingFace("bloom"), None),
    "hf_phi": (lambda: HuggingFace("phi"), None),
    "hf_llama": (lambda: HuggingFace("llama"), None),
    "hf_qwen2": (lambda: HuggingFace("qwen2"), None),
    "hf_mistral": (lambda: HuggingFace("mistral"), None),
    "hf_gemma": (lambda: HuggingFace("gemma"), None),
    "hf_vit": (lambda: HuggingFace("vit"), (2, 3, 32, 32)),
    "hf_deit": (lambda: HuggingFace("deit"), (2, 3, 32, 32)),
    "hf_convnext": (lambda: HuggingFace("convnext"), IMAGE),
    "hf_resnet": (lambda: HuggingFace("resnet"), IMAGE),
    "hf_segformer": (lambda: HuggingFace("segformer"), IMAGE),
    "hf_wav2vec2": (lambda: HuggingFace("wav2vec2"), (2, 400)),
    "conv1d": (Conv1dNet, (2, 4, 50)),
    "r3d_18": (lambda: M.video.r3d_18(num_classes=10), (2, 3, 4, 32, 32)),
    "volumes": (Volumes, (2, 3, 6, 32, 32)),
    "lrn": (Legacy, IMAGE),
    "unetish": (UNetish, IMAGE),
    "mixer": (Mixer, IMAGE),
    "inception_v3": (lambda: M.inception_v3(num_classes=10, aux_logits=False, init_weights=True), (2, 3, 96, 96)),
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
