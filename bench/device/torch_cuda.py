"""PyTorch CUDA reference for the device check: the same training step as bench/py/torch_peer.py
(torchvision model, train(), SGD momentum 0.9, softmax cross-entropy), fp32, on the GPU."""
import sys, time, statistics
import torch, torchvision
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for name, batch in [("mobilenetv2", 8), ("mobilenetv2", 32), ("resnet18", 8), ("resnet18", 32)]:
    torch.manual_seed(0)
    m = (torchvision.models.mobilenet_v2(num_classes=10, dropout=0.0) if name == "mobilenetv2" else torchvision.models.resnet18(num_classes=10)).cuda().train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 128, 128, device="cuda"); y = torch.arange(batch, device="cuda") % 10
    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(x), y); loss.backward(); opt.step(); return loss
    for _ in range(5): step()
    torch.cuda.synchronize()
    ms = []
    for _ in range(20):
        t = time.perf_counter(); step(); torch.cuda.synchronize(); ms.append((time.perf_counter() - t) * 1e3)
    print(f"torch-cuda {name} b{batch}: {statistics.median(ms):.2f} ms/step median of 20 (fp32, TF32 off, cudnn.benchmark)", flush=True)
