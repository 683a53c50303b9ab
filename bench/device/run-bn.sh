#!/bin/bash
# Device check: BatchNorm statistics one workgroup per channel (pock-bn) against the one-thread-per-channel kernel (pock-gemm).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
mkdir -p icd
echo '{"file_format_version":"1.0.0","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.3.0"}}' > icd/egl.json
export VK_ICD_FILENAMES=$PWD/icd/egl.json XDG_RUNTIME_DIR=$(mktemp -d)
chmod +x pock-gemm pock-bn
for b in 8 32; do
  ./pock-bn compile zoo:mobilenetv2:classes=10,size=128 --batch $b --optimizer sgd --momentum 0.9 --lr 0.01 --batch-norm train -o mnv2-$b.pock 2>&1 | tail -1
  ./pock-bn compile zoo:resnet18:classes=10,size=128 --batch $b --optimizer sgd --momentum 0.9 --lr 0.01 --batch-norm train -o r18-$b.pock 2>&1 | tail -1
done
for plan in mnv2-8 mnv2-32 r18-8 r18-32; do for bin in gemm bn; do
  echo "$plan $bin: $(timeout 60 ./pock-$bin bench $plan.pock --backend wgpu --steps 20 --warmup 3 --loss-every 10 2>&1 | grep -E '^(step|compute)|rror' | tr -s ' ' | tr '\n' ' ')"
done; done
for plan in r18-32 mnv2-32; do timeout 60 ./pock-bn bench $plan.pock --backend wgpu --steps 5 --warmup 2 --profile 2>&1 | grep -v "^\[" | sed -n '2p;/^op/,/^$/p' | head -8; done
