#!/bin/bash
# Device check (issue 10 part 5): pock's wgpu backend on the lent GPU, direct vs implicit-GEMM
# convolutions, next to pock's CPU backend and PyTorch CUDA where importable.
#
# The device machine has no Rust toolchain and no Vulkan loader, so the files travel with the
# command (the `device` tool's carry, from an ignored folder):
#   mkdir -p target/devbin && cp bench/device/* target/devbin/
#   cp -L /usr/lib/x86_64-linux-gnu/libvulkan.so.1 target/devbin/
#   cp <pock before> target/devbin/pock-direct; cp <pock after> target/devbin/pock-gemm; strip target/devbin/pock-*
#   device run: bash target/devbin/run.sh   (carry: target/devbin)
cd "$(dirname "$0")"
T0=$(date +%s)
nvidia-smi -L 2>&1 | head -2
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | head -1
# This container's Vulkan: the loader is carried (libvulkan.so.1); the driver's GLX ICD fails
# vkCreateInstance headless here, its EGL library works as the ICD.
export LD_LIBRARY_PATH=$PWD:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
mkdir -p icd
echo '{"file_format_version":"1.0.0","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.3.0"}}' > icd/egl.json
export VK_ICD_FILENAMES=$PWD/icd/egl.json
export XDG_RUNTIME_DIR=$(mktemp -d)
chmod +x pock-direct pock-gemm
P=./pock-gemm
$P compile zoo:cnn --batch 256 --optimizer adam --lr 0.003 -o cnn256.pock 2>&1 | tail -1
for b in 8 32; do
  $P compile zoo:mobilenetv2:classes=10,size=128 --batch $b --optimizer sgd --momentum 0.9 --lr 0.01 --batch-norm train -o mnv2-$b.pock 2>&1 | tail -1
  $P compile zoo:resnet18:classes=10,size=128 --batch $b --optimizer sgd --momentum 0.9 --lr 0.01 --batch-norm train -o r18-$b.pock 2>&1 | tail -1
done
$P compile zoo:resnet18:classes=10,size=128 --batch 32 --optimizer sgd --momentum 0.9 --lr 0.01 --batch-norm train --target gpu -o r18-32-placed.pock 2>&1 | tail -2
timeout 60 $P bench cnn256.pock --backend wgpu --steps 2 --warmup 1 2>&1 | grep -v "^\[" | head -6
echo "--- wgpu, direct (main) vs implicit-GEMM (gpu4) convolutions: 20 steps after 3, loss read every 10"
for plan in cnn256 mnv2-8 mnv2-32 r18-8 r18-32; do
  for bin in direct gemm; do
    echo "$plan $bin: $(timeout 60 ./pock-$bin bench $plan.pock --backend wgpu --steps 20 --warmup 3 --loss-every 10 2>&1 | grep -E '^(step|compute)|rror|adapter' | tr -s ' ' | tr '\n' ' ')"
  done
done
echo "r18-32-placed (--target gpu, per-node placement) gemm: $(timeout 60 ./pock-gemm bench r18-32-placed.pock --backend wgpu --steps 20 --warmup 3 --loss-every 10 2>&1 | grep -E '^(step|compute)|rror' | tr -s ' ' | tr '\n' ' ')"
echo "--- CPU backend on this machine, 8 threads"
for plan in mnv2-8 r18-8; do
  echo "$plan cpu: $(timeout 60 $P bench $plan.pock --threads 8 --steps 10 --warmup 2 2>&1 | grep -E '^(step|compute)' | tr -s ' ' | tr '\n' ' ')"
done
echo "--- profile, implicit GEMM, r18-32 and mnv2-32"
for plan in r18-32 mnv2-32; do timeout 60 $P bench $plan.pock --backend wgpu --steps 5 --warmup 2 --profile 2>&1 | grep -v "^\[" | sed -n '1,5p;/^op/,/^$/p' | head -30; done
echo "--- PyTorch CUDA"
if python3 -c "import torch, torchvision; assert torch.cuda.is_available()" 2>/dev/null; then timeout 120 python3 torch_cuda.py; else echo "torch with CUDA not importable here: $(python3 -c 'import torch' 2>&1 | tail -1)"; fi
echo "total $(( $(date +%s) - T0 )) s"
