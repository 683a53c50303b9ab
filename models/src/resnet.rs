//! `zoo:resnet18`: torchvision's `resnet18`, layer for layer and name for name.

use pock_compiler::ir::TensorId;
use pock_compiler::{ForwardGraph, Task};

use crate::builder::{Builder, Conv, WeightInit};
use crate::{ModelError, Params};

/// `conv1` 7x7 s2, `bn1`, `relu`, `maxpool` 3x3 s2 p1, `layer1..4` of two BasicBlocks each
/// (64, 128, 256, 512 channels; the first block of layers 2-4 has stride 2 and a `downsample`
/// 1x1 conv + BatchNorm), `avgpool`, `flatten`, `fc`.
///
/// Init as torchvision: convolutions `kaiming_normal_(mode="fan_out", nonlinearity="relu")`,
/// BatchNorm 1/0, `fc` with `nn.Linear`'s default.
pub fn build_resnet18(params: &Params, batch: usize, seed: u64) -> Result<ForwardGraph, ModelError> {
    let classes = params.usize_in("classes", 1, usize::MAX)?;
    let size = params.usize_in("size", 1, usize::MAX)?;
    let channels = params.usize_in("channels", 1, usize::MAX)?;

    let init = WeightInit::KaimingNormalFanOut;
    let mut b = Builder::new(seed);
    let input = b.input(vec![batch, channels, size, size]);
    let x = b.conv2d("conv1", input, Conv::new(64, 7).stride(2).init(init))?;
    let x = b.batch_norm("bn1", x)?;
    let x = b.relu("relu", x)?;
    let mut x = b.max_pool("maxpool", x, 3, 2, 1)?;

    let mut in_ch = 64;
    for (layer, planes) in [64, 128, 256, 512].into_iter().enumerate() {
        let stride = if layer == 0 { 1 } else { 2 };
        for block in 0..2 {
            let s = if block == 0 { stride } else { 1 };
            x = basic_block(&mut b, &format!("layer{}.{block}", layer + 1), x, in_ch, planes, s)?;
            in_ch = planes;
        }
    }
    let x = b.global_avg_pool("avgpool", x)?;
    let x = b.flatten("flatten", x)?;
    let output = b.linear("fc", x, classes, WeightInit::TorchDefault)?;
    Ok(ForwardGraph { name: String::new(), graph: b.graph, inputs: vec![input], output, task: Task::Classification { classes } })
}

/// torchvision's `BasicBlock`. It calls its one `relu` module twice; the second call is the node
/// `relu_1`, as `torch.fx` names repeated calls.
fn basic_block(b: &mut Builder, path: &str, x: TensorId, in_ch: usize, planes: usize, stride: usize) -> Result<TensorId, ModelError> {
    let init = WeightInit::KaimingNormalFanOut;
    let y = b.conv2d(&format!("{path}.conv1"), x, Conv::new(planes, 3).stride(stride).init(init))?;
    let y = b.batch_norm(&format!("{path}.bn1"), y)?;
    let y = b.relu(&format!("{path}.relu"), y)?;
    let y = b.conv2d(&format!("{path}.conv2"), y, Conv::new(planes, 3).init(init))?;
    let y = b.batch_norm(&format!("{path}.bn2"), y)?;
    let identity = if stride != 1 || in_ch != planes {
        let d = b.conv2d(&format!("{path}.downsample.0"), x, Conv::new(planes, 1).stride(stride).init(init))?;
        b.batch_norm(&format!("{path}.downsample.1"), d)?
    } else {
        x
    };
    let y = b.add(&format!("{path}.add"), y, identity)?;
    Ok(b.relu(&format!("{path}.relu_1"), y)?)
}
