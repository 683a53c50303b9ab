//! The burn peer of `bench/peers.sh`: torchvision's MobileNetV2 and ResNet-18 written with
//! burn's modules (names tracked as torchvision's), on the `flex` CPU backend under autodiff,
//! BatchNorm in training mode, SGD momentum 0.9 (dampening 0, as PyTorch), one rayon pool of
//! `--threads` threads. Frozen parameters: `Param::set_require_grad(false)` on every parameter
//! whose torchvision name matches none of the `--train` globs (none given: all train).
//!
//! Prints one line `RESULT {json}` like the Python peers.

use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, relu6};
use burn::tensor::Distribution;

const BATCH: usize = 8;
const SIZE: usize = 128;
const CLASSES: usize = 10;
const LR: f64 = 0.01;

/// `*` (any run, dots included), `?`, `[a-z]`, `[!0]`: the glob language of pock's `--train`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(end) = p.iter().skip(2).position(|&c| c == b']').map(|i| i + 2) else {
                return s.first() == Some(&b'[') && glob(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (neg, set) = if p[1] == b'!' { (true, &p[2..end]) } else { (false, &p[1..end]) };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob(&p[end + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// Which parameters train, and how many scalars do.
struct Frozen {
    globs: Vec<String>,
    trainable: usize,
    total: usize,
}

impl Frozen {
    fn param<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = p.shape().num_elements();
        let train = self.globs.is_empty() || self.globs.iter().any(|g| glob(g.as_bytes(), name.as_bytes()));
        self.total += n;
        if train {
            self.trainable += n;
        }
        p.set_require_grad(train)
    }
    fn conv(&mut self, name: &str, mut c: Conv2d) -> Conv2d {
        c.weight = self.param(&format!("{name}.weight"), c.weight);
        c.bias = c.bias.map(|b| self.param(&format!("{name}.bias"), b));
        c
    }
    fn bn(&mut self, name: &str, mut b: BatchNorm) -> BatchNorm {
        b.gamma = self.param(&format!("{name}.weight"), b.gamma);
        b.beta = self.param(&format!("{name}.bias"), b.beta);
        b
    }
    fn linear(&mut self, name: &str, mut l: Linear) -> Linear {
        l.weight = self.param(&format!("{name}.weight"), l.weight);
        l.bias = l.bias.map(|b| self.param(&format!("{name}.bias"), b));
        l
    }
}

/// Conv (no bias) + BatchNorm, then ReLU6 / ReLU / nothing.
#[derive(Module, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    act: usize, // 0 none, 1 relu, 2 relu6
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        f: &mut Frozen,
        conv_name: &str,
        bn_name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        groups: usize,
        act: usize,
        dev: &Device,
    ) -> Self {
        let p = k / 2;
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([s, s])
            .with_groups(groups)
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(false)
            .init(dev);
        ConvBn { conv: f.conv(conv_name, conv), bn: f.bn(bn_name, BatchNormConfig::new(cout).init(dev)), act }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.bn.forward(self.conv.forward(x));
        match self.act {
            1 => relu(y),
            2 => relu6(y),
            _ => y,
        }
    }
}

#[derive(Module, Debug)]
struct InvertedResidual {
    layers: Vec<ConvBn>,
    residual: bool,
}

#[derive(Module, Debug)]
struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    pool: AdaptiveAvgPool2d,
    classifier: Linear,
}

impl MobileNetV2 {
    fn new(f: &mut Frozen, dev: &Device) -> Self {
        let stem = ConvBn::new(f, "features.0.0", "features.0.1", 3, 32, 3, 2, 1, 2, dev);
        let settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
        let (mut cin, mut index, mut blocks) = (32, 1, Vec::new());
        for (t, c, n, s) in settings {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = cin * t;
                let p = format!("features.{index}.conv");
                let mut layers = Vec::new();
                let mut l = 0;
                if t != 1 {
                    layers.push(ConvBn::new(f, &format!("{p}.0.0"), &format!("{p}.0.1"), cin, hidden, 1, 1, 1, 2, dev));
                    l = 1;
                }
                layers.push(ConvBn::new(f, &format!("{p}.{l}.0"), &format!("{p}.{l}.1"), hidden, hidden, 3, stride, hidden, 2, dev));
                layers.push(ConvBn::new(f, &format!("{p}.{}", l + 1), &format!("{p}.{}", l + 2), hidden, c, 1, 1, 1, 0, dev));
                blocks.push(InvertedResidual { layers, residual: stride == 1 && cin == c });
                cin = c;
                index += 1;
            }
        }
        let last = ConvBn::new(f, "features.18.0", "features.18.1", cin, 1280, 1, 1, 1, 2, dev);
        let classifier = f.linear("classifier.1", LinearConfig::new(1280, CLASSES).init(dev));
        MobileNetV2 { stem, blocks, last, pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(), classifier }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for b in &self.blocks {
            let mut y = x.clone();
            for l in &b.layers {
                y = l.forward(y);
            }
            x = if b.residual { x + y } else { y };
        }
        let x = self.pool.forward(self.last.forward(x));
        self.classifier.forward(x.flatten(1, 3))
    }
}

#[derive(Module, Debug)]
struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    down: Option<ConvBn>,
}

#[derive(Module, Debug)]
struct ResNet18 {
    stem: ConvBn,
    maxpool: MaxPool2d,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl ResNet18 {
    fn new(f: &mut Frozen, dev: &Device) -> Self {
        let stem = ConvBn::new(f, "conv1", "bn1", 3, 64, 7, 2, 1, 1, dev);
        let maxpool = MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init();
        let (mut cin, mut blocks) = (64, Vec::new());
        for (layer, planes) in [64, 128, 256, 512].into_iter().enumerate() {
            for block in 0..2 {
                let s = if layer > 0 && block == 0 { 2 } else { 1 };
                let p = format!("layer{}.{block}", layer + 1);
                let a = ConvBn::new(f, &format!("{p}.conv1"), &format!("{p}.bn1"), cin, planes, 3, s, 1, 1, dev);
                let b = ConvBn::new(f, &format!("{p}.conv2"), &format!("{p}.bn2"), planes, planes, 3, 1, 1, 0, dev);
                let down = (s != 1 || cin != planes)
                    .then(|| ConvBn::new(f, &format!("{p}.downsample.0"), &format!("{p}.downsample.1"), cin, planes, 1, s, 1, 0, dev));
                blocks.push(BasicBlock { a, b, down });
                cin = planes;
            }
        }
        let fc = f.linear("fc", LinearConfig::new(512, CLASSES).init(dev));
        ResNet18 { stem, maxpool, blocks, pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(), fc }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.maxpool.forward(self.stem.forward(x));
        for b in &self.blocks {
            let y = b.b.forward(b.a.forward(x.clone()));
            let id = match &b.down {
                Some(d) => d.forward(x),
                None => x,
            };
            x = relu(y + id);
        }
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn train<M: Module>(
    model: M,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> (Vec<f64>, Vec<f64>) {
    let mut model = model;
    let mut optim = SgdConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(0.9).with_dampening(0.0))).init();
    let loss_fn = CrossEntropyLossConfig::new().init(dev);
    let x = Tensor::<4>::random([BATCH, 3, SIZE, SIZE], Distribution::Normal(0.0, 1.0), dev);
    let labels: Vec<i64> = (0..BATCH as i64).map(|i| i % CLASSES as i64).collect();
    let y = Tensor::<1, Int>::from_ints(labels.as_slice(), dev);
    let (mut ms, mut losses) = (Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        let t = Instant::now();
        let loss = loss_fn.forward(forward(&model, x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(LR, model, grads);
        let l: f32 = loss.into_scalar();
        if i >= warmup {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        losses.push(l as f64);
    }
    (ms, losses)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut model, mut scheme, mut globs, mut steps, mut warmup, mut threads) = (String::new(), String::new(), Vec::new(), 10, 3, 2);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = v(),
            "--scheme" => scheme = v(),
            "--train" => globs.push(v()),
            "--steps" => steps = v().parse().expect("--steps N"),
            "--warmup" => warmup = v().parse().expect("--warmup N"),
            "--threads" => threads = v().parse().expect("--threads N"),
            _ => panic!("unknown argument {a}; usage: burn-peer --model mobilenetv2|resnet18 --scheme LABEL [--train GLOB]... [--steps N] [--warmup N] [--threads N]"),
        }
    }
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("the rayon pool is set once, here");
    let dev = Device::flex().autodiff();
    let mut f = Frozen { globs, trainable: 0, total: 0 };
    let (ms, losses) = match model.as_str() {
        "mobilenetv2" => train(MobileNetV2::new(&mut f, &dev), MobileNetV2::forward, warmup, steps, &dev),
        "resnet18" => train(ResNet18::new(&mut f, &dev), ResNet18::forward, warmup, steps, &dev),
        m => panic!("--model must be mobilenetv2 or resnet18, not {m:?}"),
    };
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    println!(
        "RESULT {{\"system\": \"burn-flex\", \"model\": \"{model}\", \"scheme\": \"{scheme}\", \"ms_median\": {median}, \"ms_min\": {}, \"steps\": {n}, \"peak_rss_mib\": {}, \"trainable_params\": {}, \"total_params\": {}, \"loss_first\": {}, \"loss_last\": {}, \"version\": \"burn 0.22.1\", \"batch_norm\": \"train (batch statistics)\", \"optimizer\": \"SGD momentum 0.9\"}}",
        sorted[0],
        vm_hwm_mib(),
        f.trainable,
        f.total,
        losses[0],
        losses[losses.len() - 1]
    );
}
