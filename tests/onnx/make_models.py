#!/usr/bin/env python3
"""Writes pock's ONNX fixtures: small graphs, weight manifests and PyTorch parity references.

Regenerate (needs torch, torchvision, onnx; about 3 GB of wheels, so CI never runs this):

    python tests/onnx/make_models.py            # from the repository root; writes into tests/onnx/
    python tests/onnx/make_models.py --float64-only mobilenet_v2 resnet18   # only the float64 references

CI and `cargo test` only read what this script wrote and checked in: the `.onnx` graphs, the
`.manifest.json` files and the `.parity.json` references. The weight files (`.bin`) are NOT checked
in; Rust regenerates them bit for bit from the manifest (compiler/src/onnx/weights.rs).

The one weight mechanism, used for every model
----------------------------------------------
Every float32 tensor is filled by a deterministic generator that Rust reproduces exactly:

    seed(key)  = FNV-1a 64 of the key's UTF-8 bytes
    z(i)       = splitmix64 finaliser of (seed + (i + 1) * 0x9E3779B97F4A7C15) mod 2^64, i = 0, 1, ...
    uniform(bound)[i]  = f32(2 * (z(i) >> 40) - (2^24 - 1)) * (f32(bound) / 2^24)   (one f32 multiply)
    constant(v)[i]     = f32(v)
    randint(n)[i]      = (z(i) >> 32) mod n      (int64; token ids and labels)

The key of a parameter or buffer is its PyTorch name (`layer1.0.conv1.weight`); the rule follows
PyTorch's default initialisation bounds (weights and biases uniform(1/sqrt(fan_in)), norm scales 1,
norm shifts and running means 0, running variances 1, embeddings uniform(1)). The script assigns
these values to the torch model before each export and before training, then checks that every
float initializer larger than 1 KiB in the exported graph equals the generator's output. Those
initializers are moved to ONNX external data (`<fixture>.bin`, 64-byte aligned offsets) and listed
in the manifest with their rule and a CRC-32 of their bytes. An exporter that writes a tensor that
is not a torch parameter (the dynamo exporter folds BatchNormalization into Conv weights) gets that
tensor replaced by generator values keyed by its ONNX name; the manifest marks it
`"source": "replaced"` and such a fixture is graph-only, never a parity reference.

Parity references
-----------------
For mobilenet_v2, resnet18, bert, llama and unet (a tiny UNet-like classifier) the script runs 3 SGD steps (lr 0.01, momentum 0.9, no
weight decay, train mode with BatchNorm batch statistics, dropout 0) on one fixed batch and writes
the three losses (each computed before its step) and, per parameter and float buffer, a digest of
its final value: 16 elements at indices floor(k * n / 16), k = 0..15, the sum and the sum of
squares, all as f64. Classifiers use mean cross-entropy over 10 classes; the language models use
mean cross-entropy over logits [B, T, V] with labels [B, T] in which every position with
(b * T + t) % 5 == 3 is -100 (ignored).
"""

import collections
import copy
import json
import math
import os
import sys
import warnings
import zlib

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
EXTERNAL_THRESHOLD = 1024  # bytes: float initializers larger than this go to external data
ALIGN = 64

warnings.filterwarnings("ignore")
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# The generator (mirrored in compiler/src/onnx/weights.rs)
# ---------------------------------------------------------------------------------------------


def fnv1a64(key: str) -> int:
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def splitmix(key: str, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a64(key)) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def f32_bits(v: float) -> int:
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def rule_uniform(bound: float) -> dict:
    b = float(np.float32(bound))
    return {"kind": "uniform", "bound": b, "bound_bits": f32_bits(b)}


def rule_constant(v: float) -> dict:
    c = float(np.float32(v))
    return {"kind": "constant", "value": c, "value_bits": f32_bits(c)}


def generate(key: str, rule: dict, shape) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    if rule["kind"] == "constant":
        out = np.full(n, np.uint32(rule["value_bits"]), dtype=np.uint32).view(np.float32)
    elif rule["kind"] == "uniform":
        z = splitmix(key, n)
        k = (z >> np.uint64(40)).astype(np.int64) * 2 - ((1 << 24) - 1)
        bound = np.array([rule["bound_bits"]], dtype=np.uint32).view(np.float32)[0]
        scale = np.float32(bound / np.float32(1 << 24))
        out = k.astype(np.float32) * scale
    elif rule["kind"] == "randint":
        z = splitmix(key, n)
        out = ((z >> np.uint64(32)) % np.uint64(rule["n"])).astype(np.int64)
    else:
        raise ValueError(rule)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

VOCAB, HIDDEN, HEADS, SEQ, FFN, LAYERS = 100, 32, 2, 16, 64, 2


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = nn.LayerNorm(HIDDEN)
        self.ffn1 = nn.Linear(HIDDEN, FFN)
        self.ffn2 = nn.Linear(FFN, HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN)

    def forward(self, x, keep):
        b, t, h = x.shape
        d = h // HEADS
        q, k, v = self.qkv(x).split(h, dim=-1)
        q = q.reshape(b, t, HEADS, d).transpose(1, 2)
        k = k.reshape(b, t, HEADS, d).transpose(1, 2)
        v = v.reshape(b, t, HEADS, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = torch.where(keep, scores, torch.tensor(torch.finfo(torch.float32).min))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, h)
        x = self.ln1(x + self.out(ctx))
        return self.ln2(x + self.ffn2(F.gelu(self.ffn1(x))))


class Bert(nn.Module):
    """A 2-layer BERT-style encoder with a token-level (masked-LM style) head."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(SEQ, HIDDEN)
        self.ln = nn.LayerNorm(HIDDEN)
        self.layers = nn.ModuleList([BertLayer() for _ in range(LAYERS)])
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device)
        x = self.ln(self.tok(input_ids) + self.pos(pos))
        keep = attention_mask[:, None, None, :].to(torch.bool).expand(b, HEADS, t, t)
        for layer in self.layers:
            x = layer(x, keep)
        return self.head(x)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm = RMSNorm(HIDDEN)
        self.q = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.k = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.v = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.o = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.mlp_norm = RMSNorm(HIDDEN)
        self.gate = nn.Linear(HIDDEN, FFN, bias=False)
        self.up = nn.Linear(HIDDEN, FFN, bias=False)
        self.down = nn.Linear(FFN, HIDDEN, bias=False)

    def forward(self, x, cos, sin, causal):
        b, t, h = x.shape
        d = h // HEADS
        y = self.attn_norm(x)
        q = self.q(y).reshape(b, t, HEADS, d).transpose(1, 2)
        k = self.k(y).reshape(b, t, HEADS, d).transpose(1, 2)
        v = self.v(y).reshape(b, t, HEADS, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(causal, torch.finfo(torch.float32).min)
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, h)
        x = x + self.o(ctx)
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(nn.Module):
    """A 2-layer LLaMA-style decoder: RMSNorm, rotary embeddings, causal mask, SiLU-gated MLP."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList([LlamaLayer() for _ in range(LAYERS)])
        self.norm = RMSNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        d = HIDDEN // HEADS
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        ang = torch.outer(torch.arange(SEQ, dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        # Non-persistent: these tables are constants of the graph (256 floats each, stored inline).
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        self.register_buffer("causal", torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1), persistent=False)

    def forward(self, input_ids):
        x = self.tok(input_ids)
        t = input_ids.shape[1]
        cos, sin, causal = self.cos[:t], self.sin[:t], self.causal[:t, :t]
        for layer in self.layers:
            x = layer(x, cos, sin, causal)
        return self.head(self.norm(x))


class TinyUNet(nn.Module):
    """A UNet-like image model: GroupNorm, InstanceNorm, PReLU, a strided encoder, ConvTranspose and
    nearest upsampling back, a Concat skip, bilinear upsampling, then a classifier head (mean-pooled
    1x1 conv features into 10 classes, so the parity test's cross-entropy batch applies)."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = nn.GroupNorm(2, 8)
        self.act1 = nn.PReLU(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.norm2 = nn.InstanceNorm2d(16, affine=True)
        self.act2 = nn.PReLU()
        self.down2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1)
        self.act3 = nn.PReLU(16)
        self.fuse = nn.Conv2d(32, 8, 3, padding=1)
        self.norm3 = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        e1 = self.act1(self.norm1(self.enc1(x)))  # 8 x 64 x 64
        e2 = self.act2(self.norm2(self.down(e1)))  # 16 x 32 x 32
        b = self.down2(e2)  # 16 x 16 x 16
        u = self.act3(self.up(b) + F.interpolate(b, scale_factor=2, mode="nearest"))  # 16 x 32 x 32
        c = F.interpolate(torch.cat([u, e2], 1), scale_factor=2, mode="bilinear", align_corners=False)  # 32 x 64 x 64
        f = F.relu(self.norm3(self.fuse(c)))  # 8 x 64 x 64
        h = self.head(torch.cat([f, e1], 1))  # 4 x 64 x 64
        return self.fc(h.mean((2, 3)))


def build(name):
    tv = torchvision.models
    return {
        "mobilenet_v2": lambda: tv.mobilenet_v2(num_classes=10, dropout=0.0),
        "resnet18": lambda: tv.resnet18(num_classes=10),
        "bert": Bert,
        "llama": Llama,
        "unet": TinyUNet,
        "mobilenet_v3_small": lambda: tv.mobilenet_v3_small(num_classes=10),
        "efficientnet_b0": lambda: tv.efficientnet_b0(num_classes=10),
        "squeezenet1_1": lambda: tv.squeezenet1_1(num_classes=10),
        "shufflenet_v2_x1_0": lambda: tv.shufflenet_v2_x1_0(num_classes=10),
    }[name]()


PARITY = ["mobilenet_v2", "resnet18", "bert", "llama", "unet"]
# Models exported by the TorchScript exporter only (the dynamo export of these is not a fixture).
TORCHSCRIPT_ONLY = ["unet"]
GRAPH_ONLY = ["mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x1_0"]
BATCH = 2
IMAGE = (3, 64, 64)


def is_lm(name):
    return name in ("bert", "llama")


# ---------------------------------------------------------------------------------------------
# Initialisation from the generator
# ---------------------------------------------------------------------------------------------


def init_rules(model):
    """The generator rule of every float parameter and buffer, keyed by its PyTorch name."""
    rules = {}
    for mname, mod in model.named_modules():
        prefix = mname + "." if mname else ""
        for pname, p in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            full = prefix + pname
            if full in rules or not p.is_floating_point():
                continue
            if pname in ("cos", "sin"):
                continue  # graph constants, not state
            if isinstance(mod, nn.Embedding):
                rule = rule_uniform(1.0)
            elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
                                  nn.GroupNorm, RMSNorm)):
                rule = {"weight": rule_constant(1.0), "bias": rule_constant(0.0), "running_mean": rule_constant(0.0),
                        "running_var": rule_constant(1.0)}[pname]
            else:
                w = getattr(mod, "weight", None)
                fan_in = int(np.prod(w.shape[1:])) if w is not None and w.dim() >= 2 else int(np.prod(p.shape))
                rule = rule_uniform(1.0 / math.sqrt(fan_in))
            rules[full] = rule
    return rules


def init_model(model, rules):
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    with torch.no_grad():
        for key, rule in rules.items():
            t = state[key]
            t.copy_(torch.from_numpy(generate(key, rule, tuple(t.shape))))
        for key, t in state.items():
            if key.endswith("num_batches_tracked"):
                t.zero_()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_batch(name):
    """Inputs (name -> tensor) and labels from the generator; the rules go into the parity file."""
    if is_lm(name):
        ids_rule = {"kind": "randint", "n": VOCAB}
        ids = generate("input:input_ids", ids_rule, (BATCH, SEQ))
        lab = generate("labels", {"kind": "randint", "n": VOCAB}, (BATCH, SEQ))
        flat = lab.reshape(-1)
        flat[np.arange(flat.size) % 5 == 3] = -100
        inputs = {"input_ids": torch.from_numpy(ids)}
        spec = {"input_ids": {"key": "input:input_ids", "rule": ids_rule, "shape": [BATCH, SEQ], "dtype": "int64",
                              "values": ids.reshape(-1).tolist()}}
        if name == "bert":
            # The second sequence is padded: its last 5 positions are masked out.
            mask = np.ones((BATCH, SEQ), dtype=np.int64)
            mask[1, SEQ - 5:] = 0
            inputs["attention_mask"] = torch.from_numpy(mask)
            spec["attention_mask"] = {"rule": "ones, except row 1 columns 11..15 are 0", "shape": [BATCH, SEQ],
                                      "dtype": "int64", "values": mask.reshape(-1).tolist()}
        labels = {"key": "labels", "rule": {"kind": "randint", "n": VOCAB}, "ignore": "(b*T+t) % 5 == 3 -> -100",
                  "shape": [BATCH, SEQ], "values": flat.tolist()}
        return inputs, torch.from_numpy(lab), spec, labels
    x_rule = rule_uniform(1.0)
    x = generate("input:x", x_rule, (BATCH,) + IMAGE)
    lab = generate("labels", {"kind": "randint", "n": 10}, (BATCH,))
    spec = {"x": {"key": "input:x", "rule": x_rule, "shape": [BATCH, *IMAGE], "dtype": "float32",
                  "crc32": zlib.crc32(x.tobytes())}}
    labels = {"key": "labels", "rule": {"kind": "randint", "n": 10}, "shape": [BATCH], "values": lab.tolist()}
    return {"x": torch.from_numpy(x)}, torch.from_numpy(lab), spec, labels


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def export(name, model, inputs, exporter, path):
    names = list(inputs)
    args = tuple(inputs[n] for n in names)
    if exporter == "torchscript":
        dyn = {n: {0: "batch"} for n in names}
        dyn["logits"] = {0: "batch"}
        torch.onnx.export(model, args, path, dynamo=False, opset_version=17, input_names=names, output_names=["logits"],
                          dynamic_axes=dyn, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    else:
        batch = torch.export.Dim("batch", min=2, max=1024)
        dyn = {n: {0: batch} for n in names}
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=18, input_names=names, output_names=["logits"],
                                 dynamic_shapes=dyn, external_data=False, verbose=False)
        prog.save(path, external_data=False)
    m = onnx.load(path)
    if m.ir_version > 10:
        m.ir_version = 10
    return m


def strip(graph):
    """Drops stack traces and doc strings, which make up most of an exported graph's bytes."""
    graph.doc_string = ""
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                strip(a.g)
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        del vi.metadata_props[:]
        vi.doc_string = ""
    for init in graph.initializer:
        del init.metadata_props[:]


def externalise(m, rules, buffers, stem, parity):
    """Moves every float initializer > 1 KiB into `<stem>.bin` and returns the manifest entries."""
    entries, blob = [], bytearray()
    for init in m.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = onnx.numpy_helper.to_array(init)
        if init.name in buffers and init.name in rules:
            # The TorchScript exporter traces one forward pass in training mode, which moves the
            # BatchNorm running statistics before it captures them: restore the initial state.
            fresh = generate(init.name, rules[init.name], arr.shape).astype("<f4")
            init.CopyFrom(onnx.numpy_helper.from_array(fresh, init.name))
            arr = fresh
        if arr.nbytes <= EXTERNAL_THRESHOLD:
            continue
        key, rule, source = init.name, rules.get(init.name), "torch"
        expect = generate(key, rule, arr.shape) if rule is not None else None
        if expect is None or expect.tobytes() != np.ascontiguousarray(arr).tobytes():
            if parity == "required":
                raise SystemExit(f"{stem}: initializer {init.name} does not equal the generator's output; "
                                 "a parity fixture must carry the torch model's own values")
            fan_in = int(np.prod(arr.shape[1:])) if arr.ndim >= 2 else arr.size
            rule, source = rule_uniform(1.0 / math.sqrt(fan_in)), "replaced"
            expect = generate(key, rule, arr.shape)
        data = expect.astype("<f4").tobytes()
        pad = (-len(blob)) % ALIGN
        blob += b"\0" * pad
        offset = len(blob)
        blob += data
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", stem + ".bin"), ("offset", str(offset)), ("length", str(len(data)))):
            e = init.external_data.add()
            e.key, e.value = k, v
        entries.append({"name": init.name, "key": key, "rule": rule, "source": source, "shape": list(arr.shape),
                        "offset": offset, "length": len(data), "crc32": zlib.crc32(data)})
    with open(os.path.join(HERE, stem + ".bin"), "wb") as f:
        f.write(blob)
    return entries, len(blob)


def graph_io(values):
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
    return out


def write_fixture(name, exporter, parity):
    model = build(name)
    rules = init_rules(model)
    model.train()
    init_model(model, rules)
    inputs, _, _, _ = make_batch(name)
    short = {"torchscript": "ts", "dynamo": "dynamo"}[exporter]
    stem = f"{name}.{short}"
    path = os.path.join(HERE, stem + ".onnx")
    m = export(name, copy.deepcopy(model), inputs, exporter, path)
    strip(m.graph)
    entries, bin_len = externalise(m, rules, {k for k, _ in model.named_buffers()}, stem, parity)
    onnx.save_model(m, path)
    # Independent checks: onnx's own checker (which reads the external data) and a reload of every
    # external tensor compared with the generator's bytes.
    onnx.checker.check_model(path, full_check=False)
    back = onnx.load(path, load_external_data=True)
    by_name = {i.name: i for i in back.graph.initializer}
    for e in entries:
        got = onnx.numpy_helper.to_array(by_name[e["name"]]).astype("<f4").tobytes()
        assert zlib.crc32(got) == e["crc32"], e["name"]
    ops = collections.Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in m.graph.node)
    manifest = {
        "model": name,
        "exporter": exporter,
        "torch": torch.__version__,
        "onnx_file": stem + ".onnx",
        "data_file": stem + ".bin",
        "data_length": bin_len,
        "ir_version": m.ir_version,
        "opset_import": {o.domain: o.version for o in m.opset_import},
        # A fixture is a parity reference only if it carries the torch model's parameters as they are.
        "parity": bool(parity) and all(e["source"] == "torch" for e in entries),
        "node_count": len(m.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "initializer_count": len(m.graph.initializer),
        "inputs": graph_io([i for i in m.graph.input if i.name not in by_name]),
        "outputs": graph_io(m.graph.output),
        "value_info_count": len(m.graph.value_info),
        "external": entries,
    }
    with open(os.path.join(HERE, stem + ".manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"{stem}: {len(m.graph.node)} nodes, {os.path.getsize(path)} B graph, {bin_len} B external, "
          f"{sum(e['source'] == 'replaced' for e in entries)} replaced", flush=True)
    return manifest


def digest(t):
    a = t.detach().double().reshape(-1).numpy()
    n = a.size
    idx = [(k * n) // 16 for k in range(16)]
    return {"shape": list(t.shape), "indices": idx, "values": [float(a[i]) for i in idx], "sum": float(a.sum()),
            "sumsq": float((a * a).sum())}


def write_parity(name):
    model = build(name)
    rules = init_rules(model)
    init_model(model, rules)
    model.train()
    inputs, labels, spec, label_spec = make_batch(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        logits = model(**inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = {k: digest(p) for k, p in model.named_parameters()}
    buffers = {k: digest(b) for k, b in model.named_buffers() if b.is_floating_point() and k in rules}
    ref = {
        "model": name,
        "torch": torch.__version__,
        "optimizer": {"kind": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "steps": 3},
        "loss": "cross-entropy, mean over non-ignored positions, ignore_index -100",
        "inputs": spec,
        "labels": label_spec,
        "losses": losses,
        "params": params,
        "buffers": buffers,
    }
    with open(os.path.join(HERE, name + ".parity.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"{name}: losses {losses}", flush=True)


def add_float64_reference(name):
    """Adds a float64 run of the same 3 steps to `<name>.parity.json` (key "float64").

    A float32 run is only as reproducible as its worst-conditioned step: mobilenet_v2 at batch 2
    and 64x64 pixels ends in 2x2 feature maps where a ReLU6 input lies within float32 rounding
    of the kink, so two correct float32 implementations that sum in different orders can take
    different branches there and their losses part by percents. In float64 the same computation
    is reproducible far below 1e-4, so pock's float64 interpreter is compared with this run.
    """
    model = build(name)
    rules = init_rules(model)
    init_model(model, rules)
    model.double()
    model.train()
    # A plan stores its hyperparameters as float32, and the ONNX graph stores BatchNorm's
    # momentum as float32(1 - 0.1): this run uses those values. In float64 with the Python
    # literals instead, mobilenet_v2's third loss moves by 3e-5 relative (the 2e-8 rounding of
    # the hyperparameters amplified about a million times by the same ill-conditioned kink).
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = f32(1.0 - f32(1.0 - m.momentum))
    inputs, labels, _, _ = make_batch(name)
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
    opt = torch.optim.SGD(model.parameters(), lr=f32(0.01), momentum=f32(0.9))
    losses = []
    for _ in range(3):
        logits = model(**inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = os.path.join(HERE, name + ".parity.json")
    with open(path) as f:
        ref = json.load(f)
    ref["float64"] = {
        "losses": losses,
        "params": {k: digest(p) for k, p in model.named_parameters()},
        "buffers": {k: digest(b) for k, b in model.named_buffers() if b.is_floating_point() and k in rules},
    }
    with open(path, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"{name}: float64 losses {losses}", flush=True)


def main():
    if sys.argv[1:2] == ["--float64-only"]:
        # Adds the float64 reference to existing parity files without re-exporting anything.
        for name in sys.argv[2:] or PARITY:
            add_float64_reference(name)
        return
    only = set(sys.argv[1:])
    summary = {}
    for name in PARITY + GRAPH_ONLY:
        if only and name not in only:
            continue
        for exporter in ("torchscript",) if name in TORCHSCRIPT_ONLY else ("torchscript", "dynamo"):
            # The TorchScript exports in training mode keep every torch parameter and must be parity
            # references. The dynamo exporter folds BatchNormalization into Conv and constant-folds
            # ops over parameters (a position-embedding lookup), so its exports are parity
            # references only where every external tensor survived unchanged.
            parity = name in PARITY and ("required" if exporter == "torchscript" else "if-unchanged")
            try:
                man = write_fixture(name, exporter, parity)
                summary[f"{name}.{exporter}"] = man["op_counts"]
            except Exception as e:  # noqa: BLE001 - an exporter failure is reported, not fatal
                print(f"{name} {exporter}: export failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                summary[f"{name}.{exporter}"] = {"export_failed": str(e)[:300]}
        if name in PARITY:
            write_parity(name)
            add_float64_reference(name)
    if not only:
        with open(os.path.join(HERE, "op_counts.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        write_op_table(summary)


def write_op_table(summary):
    """OPS.md: which op types each export uses, with counts: the importer's to-do list."""
    cols = list(summary)
    ops = sorted({op for counts in summary.values() for op in counts if op != "export_failed"})
    short = [c.replace(".torchscript", " ts").replace(".dynamo", " dy") for c in cols]
    lines = ["# ONNX op types in the fixtures", "",
             "Written by `make_models.py` (counts of nodes per op type; ts = TorchScript exporter, opset 17, "
             "training mode; dy = dynamo exporter, opset 18).", "",
             "| op | models | " + " | ".join(short) + " |", "|---|---|" + "---|" * len(cols)]
    for op in ops:
        cells = [str(summary[c].get(op, "")) for c in cols]
        lines.append(f"| {op} | {sum(1 for c in cells if c)} | " + " | ".join(cells) + " |")
    with open(os.path.join(HERE, "OPS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
