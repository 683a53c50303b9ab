"""PyTorch peer: torchvision MobileNetV2 / ResNet-18, train() mode (BatchNorm batch statistics), or
the 2-layer BERT encoder of bert_peer_model.py (token-level cross-entropy); SGD momentum 0.9,
frozen parameters through requires_grad=False (and left out of the optimizer)."""

import common

args = common.parse_args(__doc__)
import torch  # noqa: E402
import torchvision  # noqa: E402

torch.set_num_threads(args.threads)
torch.set_num_interop_threads(args.threads)
torch.manual_seed(0)
if args.model == "mobilenetv2":
    # dropout=0: pock's static plan has no dropout (issue 2); the index keeps torchvision's names.
    model = torchvision.models.mobilenet_v2(num_classes=common.CLASSES, dropout=0.0)
elif args.model == "resnet18":
    model = torchvision.models.resnet18(num_classes=common.CLASSES)
else:
    import bert_peer_model as bert

    model = bert.model()
model.train()
params = []
for name, p in model.named_parameters():
    p.requires_grad_(common.trains(name, args.train))
    if p.requires_grad:
        params.append(p)
opt = torch.optim.SGD(params, lr=common.LR, momentum=common.MOMENTUM)
loss_fn = torch.nn.CrossEntropyLoss()
if args.model == "bert":
    ids, mask, labels = (torch.from_numpy(a) for a in bert.batch(common.BATCH))
    inputs, y = (ids, mask), labels.reshape(-1)
    forward = lambda: model(*inputs).reshape(-1, bert.VOCAB)  # noqa: E731
else:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(common.BATCH, common.CHANNELS, common.SIZE, common.SIZE, generator=g)
    y = torch.arange(common.BATCH) % common.CLASSES
    forward = lambda: model(x)  # noqa: E731


def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(forward(), y)
    loss.backward()
    opt.step()
    return loss.item()


ms, losses = common.time_steps(step, args.warmup, args.steps)
trainable = sum(p.numel() for p in params)
total = sum(p.numel() for p in model.parameters())
common.report("pytorch", args, ms, losses, trainable, total,
              {"version": torch.__version__, "optimizer": "SGD momentum 0.9",
               "batch_norm": "none (LayerNorm)" if args.model == "bert" else "train (batch statistics)"})
