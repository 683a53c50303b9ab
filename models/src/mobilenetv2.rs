//! `zoo:mobilenetv2`: torchvision's `MobileNetV2`, layer for layer and name for name.

use pock_compiler::{ForwardGraph, Task};

use crate::builder::{Activation, Builder, Conv, WeightInit};
use crate::{ModelError, Params};

/// Expansion factor t, output channels c, repeats n, first stride s of each stage.
const INVERTED_RESIDUAL_SETTING: [[usize; 4]; 7] =
    [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]];

/// torchvision's `_make_divisible(v, 8)`: round to the nearest multiple of the divisor, never
/// below it, and never more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = ((v + d / 2.0) / d).floor() as usize * divisor;
    new_v = new_v.max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// `features.0` stem (conv3x3 s2), 17 inverted residual blocks `features.1..=17`, the 1x1 head
/// conv `features.18`, average pooling, and `classifier.1` (torchvision's `classifier.0` is a
/// dropout, which a static training plan omits; its index stays unused so the names match).
///
/// Init as torchvision: convolutions `kaiming_normal_(mode="fan_out")`, BatchNorm 1/0, the
/// classifier `normal_(0, 0.01)` with a zero bias.
/// The largest width multiplier accepted.
pub const MAX_WIDTH: f64 = 4.0;

pub fn build(params: &Params, batch: usize, seed: u64) -> Result<ForwardGraph, ModelError> {
    let classes = params.usize_in("classes", 1, usize::MAX)?;
    let size = params.usize_in("size", 1, usize::MAX)?;
    // Parameters grow with the square of the width: 4 already gives about 16 times the 3.5 M
    // parameters of width 1, and larger values would only exhaust memory while initialising.
    let width = params.positive_f64_up_to("width", MAX_WIDTH)?;
    let channels = params.usize_in("channels", 1, usize::MAX)?;

    let conv_init = WeightInit::KaimingNormalFanOut;
    let mut b = Builder::new(seed);
    let input = b.input(vec![batch, channels, size, size]);

    let mut in_ch = make_divisible(32.0 * width, 8);
    let last_ch = make_divisible(1280.0 * width.max(1.0), 8);
    let mut x = b.conv_bn_act("features.0", input, Conv::new(in_ch, 3).stride(2).init(conv_init), Activation::Relu6)?;

    let mut index = 1;
    for [t, c, n, s] in INVERTED_RESIDUAL_SETTING {
        let out_ch = make_divisible(c as f64 * width, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            x = inverted_residual(&mut b, &format!("features.{index}"), x, in_ch, out_ch, stride, t)?;
            in_ch = out_ch;
            index += 1;
        }
    }
    x = b.conv_bn_act(&format!("features.{index}"), x, Conv::new(last_ch, 1).init(conv_init), Activation::Relu6)?;

    let x = b.global_avg_pool("adaptive_avg_pool2d", x)?;
    let x = b.flatten("flatten", x)?;
    let output = b.linear("classifier.1", x, classes, WeightInit::Normal { std: 0.01 })?;
    Ok(ForwardGraph { name: String::new(), graph: b.graph, inputs: vec![input], output, task: Task::Classification { classes } })
}

/// torchvision's `InvertedResidual`: an optional 1x1 expansion (`conv.0`, absent when t = 1), a
/// depthwise 3x3 (`conv.0` or `conv.1`), a linear 1x1 projection and its BatchNorm, and the
/// residual `add` when the block keeps both stride and channels.
fn inverted_residual(
    b: &mut Builder,
    path: &str,
    x: pock_compiler::ir::TensorId,
    in_ch: usize,
    out_ch: usize,
    stride: usize,
    expand: usize,
) -> Result<pock_compiler::ir::TensorId, ModelError> {
    let init = WeightInit::KaimingNormalFanOut;
    // `int(round(inp * expand_ratio))` with an integer ratio is exact.
    let hidden = in_ch * expand;
    let mut y = x;
    let mut layer = 0;
    if expand != 1 {
        y = b.conv_bn_act(&format!("{path}.conv.{layer}"), y, Conv::new(hidden, 1).init(init), Activation::Relu6)?;
        layer += 1;
    }
    y = b.conv_bn_act(
        &format!("{path}.conv.{layer}"),
        y,
        Conv::new(hidden, 3).stride(stride).groups(hidden).init(init),
        Activation::Relu6,
    )?;
    y = b.conv2d(&format!("{path}.conv.{}", layer + 1), y, Conv::new(out_ch, 1).init(init))?;
    y = b.batch_norm(&format!("{path}.conv.{}", layer + 2), y)?;
    if stride == 1 && in_ch == out_ch {
        y = b.add(&format!("{path}.add"), x, y)?;
    }
    Ok(y)
}
