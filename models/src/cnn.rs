//! `zoo:cnn`: the small convolutional classifier of the demo.

use pock_compiler::{ForwardGraph, Task};

use crate::builder::{Builder, Conv, WeightInit};
use crate::{ModelError, Params};

/// Three conv blocks in `features` (an `nn.Sequential`), then global average pooling and a
/// linear classifier:
///
/// ```text
/// features.0 conv3x3 ch->w, .1 BN, .2 ReLU, .3 maxpool 2
/// features.4 conv3x3 w->2w, .5 BN, .6 ReLU, .7 maxpool 2
/// features.8 conv3x3 2w->4w, .9 BN, .10 ReLU
/// pool (global average), flatten, classifier Linear 4w->classes
/// ```
///
/// The convolutions have no bias because the BatchNorm after each one has its own shift.
/// Global pooling keeps the classifier small and makes the network indifferent to where in the
/// image a shape is drawn.
pub fn build(params: &Params, batch: usize, seed: u64) -> Result<ForwardGraph, ModelError> {
    let channels = params.usize_in("channels", 1, usize::MAX)?;
    // Two 2x2 max-pools need at least 4 pixels to leave a 1x1 map.
    let size = params.usize_in("size", 4, usize::MAX)?;
    let classes = params.usize_in("classes", 2, usize::MAX)?;
    let width = params.usize_in("width", 1, usize::MAX)?;

    let mut b = Builder::new(seed);
    let input = b.input(vec![batch, channels, size, size]);
    let mut x = input;
    let widths = [width, 2 * width, 4 * width];
    for (block, &w) in widths.iter().enumerate() {
        let base = 4 * block;
        x = b.conv2d(&format!("features.{base}"), x, Conv::new(w, 3))?;
        x = b.batch_norm(&format!("features.{}", base + 1), x)?;
        x = b.relu(&format!("features.{}", base + 2), x)?;
        if block < 2 {
            x = b.max_pool(&format!("features.{}", base + 3), x, 2, 2, 0)?;
        }
    }
    let x = b.global_avg_pool("pool", x)?;
    let x = b.flatten("flatten", x)?;
    let output = b.linear("classifier", x, classes, WeightInit::TorchDefault)?;
    Ok(ForwardGraph { name: String::new(), graph: b.graph, inputs: vec![input], output, task: Task::Classification { classes } })
}
