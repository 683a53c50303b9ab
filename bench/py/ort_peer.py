"""ONNX Runtime training peer (onnxruntime-training 1.19.2): the torchvision model exported by
torch's TorchScript exporter in training mode (BatchNorm batch statistics), training artifacts
from onnxruntime.training.artifacts with the frozen parameters listed as frozen_params, and the
step run through the on-device training API (Module + Optimizer), 2 intra-op threads. The BERT
encoder (bert_peer_model.py) is exported with its logits flattened to [B*T, V], the layout ORT's
cross-entropy artifact takes.

ORT training's artifact optimizers are AdamW and plain SGD (no momentum): this peer uses plain
SGD, one update op per trainable parameter, so it does a little less optimizer work than the
others (momentum adds one multiply-add per trainable parameter)."""

import os
import tempfile

import common

args = common.parse_args(__doc__)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from onnxruntime.training import artifacts  # noqa: E402
from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402

system = "onnxruntime-training"
torch.manual_seed(0)
if args.model == "mobilenetv2":
    model = torchvision.models.mobilenet_v2(num_classes=common.CLASSES, dropout=0.0)
elif args.model == "resnet18":
    model = torchvision.models.resnet18(num_classes=common.CLASSES)
else:
    import bert_peer_model as bert

    model = bert.model()
model.train()
names = [n for n, _ in model.named_parameters()]
shapes = {n: p.numel() for n, p in model.named_parameters()}
train_names = [n for n in names if common.trains(n, args.train)]

work = tempfile.mkdtemp(prefix="peers-ort-")
onnx_path = os.path.join(work, "model.onnx")
if args.model == "bert":
    # Opset 16: torch writes LayerNorm as its primitive ops, since ORT 1.19's gradient builder
    # fails on opset 17's one-output LayerNormalization node.
    bert.export(model, onnx_path, common.BATCH, flat=True, training=True, opset=16)
else:
    x = torch.randn(common.BATCH, common.CHANNELS, common.SIZE, common.SIZE)
    torch.onnx.export(model, (x,), onnx_path, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      dynamo=False, input_names=["input"], output_names=["logits"], opset_version=17)
graph = onnx.load(onnx_path)
if graph.ir_version > 10:
    common.fail(system, args, f"exported IR version {graph.ir_version} > 10, which onnxruntime-training 1.19.2 rejects: "
                "pin onnx<1.17 in its venv (bench/peers.sh does)")
frozen = [i.name for i in graph.graph.initializer if i.name not in set(train_names)]
missing = [n for n in train_names if n not in {i.name for i in graph.graph.initializer}]
if missing:
    common.fail(system, args, f"trainable parameters missing from the exported graph: {missing[:5]}")
artifacts.generate_artifacts(graph, requires_grad=train_names, frozen_params=frozen,
                             loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
                             artifact_directory=work)
so = ort.SessionOptions()
so.intra_op_num_threads = args.threads
so.inter_op_num_threads = args.threads
if os.environ.get("PEERS_NO_SPIN", "0") == "1":  # see bench/peers.sh: passive waits on a loaded machine
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
state = CheckpointState.load_checkpoint(os.path.join(work, "checkpoint"))
# No eval model: ORT's generated eval graph keeps the training-mode BatchNorm outputs and fails
# shape inference ("number of op outputs should be 1 when Training_mode = False"); only the
# training step is timed.
module = Module(os.path.join(work, "training_model.onnx"), state, None, device="cpu", session_options=so)
opt = Optimizer(os.path.join(work, "optimizer_model.onnx"), module)
opt.set_learning_rate(common.LR)
module.train()
if args.model == "bert":
    ids, mask, labels = bert.batch(common.BATCH)
    inputs = (ids, mask, labels.reshape(-1))
else:
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((common.BATCH, common.CHANNELS, common.SIZE, common.SIZE), dtype=np.float32)
    inputs = (xb, (np.arange(common.BATCH) % common.CLASSES).astype(np.int64))


def step():
    loss = module(*inputs)
    opt.step()
    module.lazy_reset_grad()
    return float(np.asarray(loss))


ms, losses = common.time_steps(step, args.warmup, args.steps)
common.report(system, args, ms, losses, sum(shapes[n] for n in train_names), sum(shapes.values()),
              {"version": ort.__version__,
               "batch_norm": "none (LayerNorm)" if args.model == "bert" else "train (batch statistics)",
               "optimizer": "plain SGD (ORT training has no SGD momentum)"})
