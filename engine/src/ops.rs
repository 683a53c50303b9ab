//! The primitive operations a plan can contain: their attributes, argument conventions and shape
//! rules.
//!
//! The compiler and the engine share this one definition. The compiler uses [`Op::output_shapes`]
//! to infer shapes while it builds graphs; the engine uses the same rule to validate every node of
//! a plan it loads before any kernel touches memory. Gradient rules and cost models live with the
//! compiler (`compiler/src/grad/`), kernels live in [`crate::kernels`].
//!
//! Argument conventions: a node has `inputs` (read only) and `outputs` (written). Some outputs are
//! updated in place ([`Op::inplace_outputs`]): they name persistent tensors (parameters, optimizer
//! state, running statistics, gradient accumulators) whose previous value the kernel reads. All
//! tensors are `f32` except the positions listed by [`Op::int_inputs`], which are `i64` labels.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use serde::{Deserialize, Serialize};

/// How a loss reduces over the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reduction {
    /// One scalar: the mean over all samples (the training loss).
    Mean,
    /// One value per sample, shape `[N]` (evaluation, where padded rows are dropped on the host).
    PerSample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatMul {
    /// `a` is stored `[K, M]` and used transposed.
    pub trans_a: bool,
    /// `b` is stored `[N, K]` and used transposed (a PyTorch `Linear` weight).
    pub trans_b: bool,
}

/// 2-D convolution attributes, NCHW layout, weights `[O, C/groups, KH, KW]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2d {
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`, as ONNX `pads` orders them for 2-D.
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// Max/average pooling attributes, NCHW layout. Output size rounds down (no ceil mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Average pooling only: whether padded zeros count in the divisor (PyTorch's default: true).
    pub count_include_pad: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub eps: f32,
    /// Running statistics update: `running = (1 - momentum) * running + momentum * batch`
    /// (PyTorch's convention; the running variance uses the unbiased batch variance).
    pub momentum: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub min: f32,
    pub max: f32,
}

/// SGD with momentum, dampening, Nesterov and (coupled) weight decay, exactly as `torch.optim.SGD`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// Whether the gradient is multiplied by a runtime scale (clipping, accumulation) first.
    pub scaled: bool,
}

/// Adam / AdamW with bias correction, as `torch.optim.Adam` and `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// `true`: AdamW's decoupled decay `p -= lr * wd * p`; `false`: Adam's `g += wd * p`.
    pub decoupled: bool,
    pub scaled: bool,
}

/// Computes the runtime gradient scale `multiplier * min(1, max_norm / (norm + 1e-6))`, where
/// `norm` is the global L2 norm of `multiplier * g` over all inputs (PyTorch's
/// `clip_grad_norm_`). Without `max_norm` the scale is just `multiplier` (1/K for accumulation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScale {
    pub max_norm: Option<f32>,
    pub multiplier: f32,
}

/// Every primitive op. The doc comment of each variant is its argument convention:
/// `inputs -> outputs`, with `*` marking outputs updated in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    // ---- forward ----
    /// `[a, b] -> [y]`, 2-D: `y = op(a) @ op(b)`.
    MatMul(MatMul),
    /// `[x, b] -> [y]`: `y = x + b` broadcast along axis 1 (`x` has rank >= 2, `b` is `[C]`).
    BiasAdd,
    /// `[a, b] -> [y]`, same shapes.
    Add,
    /// `[a, b] -> [y]`, same shapes.
    Mul,
    /// `[x] -> [y]`.
    Relu,
    /// `[x] -> [y]`: `y = min(max(x, min), max)` (ReLU6 is `Clip { 0, 6 }`).
    Clip(Clip),
    /// `[x] -> [y]`: same data, new shape (the planner aliases `y` onto `x` when it can).
    Reshape { shape: Vec<usize> },
    /// `[x, w] -> [y]`.
    Conv2d(Conv2d),
    /// `[x, gamma, beta] -> [y, saved_mean, saved_invstd, running_mean*, running_var*]`: batch
    /// statistics over all axes but 1 (input rank 2 or 4).
    BatchNormTrain(BatchNorm),
    /// `[x, gamma, beta, running_mean, running_var] -> [y]`: frozen statistics.
    BatchNormInfer(BatchNorm),
    /// `[x] -> [y]`: `[N, C, H, W] -> [N, C, 1, 1]`.
    GlobalAvgPool,
    /// `[x] -> [y]`.
    AvgPool2d(Pool2d),
    /// `[x] -> [y]`.
    MaxPool2d(Pool2d),
    /// `[logits, labels] -> [loss]`: logits `[N, C]`, labels `[N]` (`i64`), loss `[]` or `[N]`.
    SoftmaxCrossEntropy(Reduction),
    /// `[pred, target] -> [loss]`: mean squared error over all but axis 0, loss `[]` or `[N]`.
    Mse(Reduction),

    // ---- backward ----
    /// `[dy] -> [db]`: sum of `dy` over all axes but 1.
    BiasGrad,
    /// `[dy, x] -> [dx]`.
    ReluGrad,
    /// `[dy, x] -> [dx]`: `dy` where `min < x < max`, else 0.
    ClipGrad(Clip),
    /// `[dy, w] -> [dx]`; `input_hw` is the forward input's spatial size.
    Conv2dGradInput { conv: Conv2d, input_hw: [usize; 2] },
    /// `[dy, x] -> [dw]`; `kernel_hw` is the weight's spatial size.
    Conv2dGradWeight { conv: Conv2d, kernel_hw: [usize; 2] },
    /// `[dy, x, gamma, saved_mean, saved_invstd] -> [dx, dgamma, dbeta]`.
    BatchNormTrainGrad(BatchNorm),
    /// `[dy, x, gamma, running_mean, running_var] -> [dx, dgamma, dbeta]`.
    BatchNormInferGrad(BatchNorm),
    /// `[dy] -> [dx]`: `[N, C, 1, 1] -> [N, C, H, W]`.
    GlobalAvgPoolGrad { input_hw: [usize; 2] },
    /// `[dy] -> [dx]`.
    AvgPool2dGrad { pool: Pool2d, input_hw: [usize; 2] },
    /// `[dy, x] -> [dx]`: the gradient goes to the first maximum of each window.
    MaxPool2dGrad(Pool2d),
    /// `[dloss, logits, labels] -> [dlogits]`.
    SoftmaxCrossEntropyGrad(Reduction),
    /// `[dloss, pred, target] -> [dpred]`.
    MseGrad(Reduction),

    // ---- gradient bookkeeping and optimizers ----
    /// `[g] -> [acc*]`: `acc += g`.
    AccumulateGrad,
    /// `[] -> [t*]`: every element of `t` becomes `value`.
    Fill { value: f32 },
    /// `[g_1, ..., g_n] -> [scale]`, `scale` has shape `[]`.
    GradScale(GradScale),
    /// `[grad, lr, step, (scale)] -> [param*, (momentum_buffer*)]`; the buffer exists iff momentum
    /// != 0. On step 1 the buffer is set to the gradient, as PyTorch does.
    SgdUpdate(Sgd),
    /// `[grad, lr, step, (scale)] -> [param*, exp_avg*, exp_avg_sq*]`; `step` counts from 1.
    AdamUpdate(Adam),
}

/// Why a node's shapes do not fit its op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct ShapeError {
    pub op: &'static str,
    pub message: alloc::string::String,
}

fn err(op: &'static str, message: impl Into<alloc::string::String>) -> ShapeError {
    ShapeError { op, message: message.into() }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Output size of a strided window along one axis, or `None` when the window does not fit.
pub fn window_out(input: usize, pad_a: usize, pad_b: usize, kernel: usize, stride: usize, dilation: usize) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad_a)?.checked_add(pad_b)?;
    if stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul(_) => "MatMul",
            Op::BiasAdd => "BiasAdd",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Relu => "Relu",
            Op::Clip(_) => "Clip",
            Op::Reshape { .. } => "Reshape",
            Op::Conv2d(_) => "Conv2d",
            Op::BatchNormTrain(_) => "BatchNormTrain",
            Op::BatchNormInfer(_) => "BatchNormInfer",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::SoftmaxCrossEntropy(_) => "SoftmaxCrossEntropy",
            Op::Mse(_) => "Mse",
            Op::BiasGrad => "BiasGrad",
            Op::ReluGrad => "ReluGrad",
            Op::ClipGrad(_) => "ClipGrad",
            Op::Conv2dGradInput { .. } => "Conv2dGradInput",
            Op::Conv2dGradWeight { .. } => "Conv2dGradWeight",
            Op::BatchNormTrainGrad(_) => "BatchNormTrainGrad",
            Op::BatchNormInferGrad(_) => "BatchNormInferGrad",
            Op::GlobalAvgPoolGrad { .. } => "GlobalAvgPoolGrad",
            Op::AvgPool2dGrad { .. } => "AvgPool2dGrad",
            Op::MaxPool2dGrad(_) => "MaxPool2dGrad",
            Op::SoftmaxCrossEntropyGrad(_) => "SoftmaxCrossEntropyGrad",
            Op::MseGrad(_) => "MseGrad",
            Op::AccumulateGrad => "AccumulateGrad",
            Op::Fill { .. } => "Fill",
            Op::GradScale(_) => "GradScale",
            Op::SgdUpdate(_) => "SgdUpdate",
            Op::AdamUpdate(_) => "AdamUpdate",
        }
    }

    /// Input positions that hold `i64` labels; every other tensor is `f32`.
    pub fn int_inputs(&self) -> &'static [usize] {
        match self {
            Op::SoftmaxCrossEntropy(_) => &[1],
            Op::SoftmaxCrossEntropyGrad(_) => &[2],
            _ => &[],
        }
    }

    /// Output positions that are updated in place: they must name existing persistent tensors.
    pub fn inplace_outputs(&self) -> Range<usize> {
        match self {
            Op::BatchNormTrain(_) => 3..5,
            Op::AccumulateGrad | Op::Fill { .. } => 0..1,
            Op::SgdUpdate(s) => 0..if s.momentum != 0.0 { 2 } else { 1 },
            Op::AdamUpdate(_) => 0..3,
            _ => 0..0,
        }
    }

    /// Number of inputs the op takes, or `None` when it takes any number (GradScale, at least 1).
    pub fn input_arity(&self) -> Option<usize> {
        Some(match self {
            Op::Relu | Op::Clip(_) | Op::Reshape { .. } | Op::GlobalAvgPool | Op::AvgPool2d(_) | Op::MaxPool2d(_) => 1,
            Op::BiasGrad | Op::GlobalAvgPoolGrad { .. } | Op::AvgPool2dGrad { .. } | Op::AccumulateGrad => 1,
            Op::MatMul(_) | Op::BiasAdd | Op::Add | Op::Mul | Op::Conv2d(_) => 2,
            Op::SoftmaxCrossEntropy(_) | Op::Mse(_) => 2,
            Op::ReluGrad | Op::ClipGrad(_) | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } | Op::MaxPool2dGrad(_) => 2,
            Op::BatchNormTrain(_) => 3,
            Op::SoftmaxCrossEntropyGrad(_) | Op::MseGrad(_) => 3,
            Op::BatchNormInfer(_) | Op::BatchNormTrainGrad(_) | Op::BatchNormInferGrad(_) => 5,
            Op::Fill { .. } => 0,
            Op::GradScale(_) => return None,
            Op::SgdUpdate(s) => 3 + s.scaled as usize,
            Op::AdamUpdate(a) => 3 + a.scaled as usize,
        })
    }

    /// Shapes of all outputs (in-place ones included) given the input shapes.
    ///
    /// `Fill` has no inputs to infer from: it returns no shapes and accepts any output.
    pub fn output_shapes(&self, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>, ShapeError> {
        let name = self.name();
        if let Some(n) = self.input_arity() {
            if inputs.len() != n {
                return Err(err(name, alloc::format!("expects {n} inputs, got {}", inputs.len())));
            }
        } else if inputs.is_empty() {
            return Err(err(name, "expects at least one input"));
        }
        let same = |a: &[usize], b: &[usize], what: &str| -> Result<(), ShapeError> {
            if a != b {
                return Err(err(name, alloc::format!("{what}: shapes {a:?} and {b:?} differ")));
            }
            Ok(())
        };
        let scalar = |s: &[usize], what: &str| -> Result<(), ShapeError> {
            if numel(s) != 1 || !s.is_empty() {
                return Err(err(name, alloc::format!("{what} must be a scalar (shape []), got {s:?}")));
            }
            Ok(())
        };
        let rank = |s: &[usize], r: usize, what: &str| -> Result<(), ShapeError> {
            if s.len() != r {
                return Err(err(name, alloc::format!("{what} must have rank {r}, got shape {s:?}")));
            }
            Ok(())
        };
        let channels = |x: &[usize]| -> Result<usize, ShapeError> {
            if x.len() < 2 {
                return Err(err(name, alloc::format!("input must have rank >= 2 (channel axis 1), got {x:?}")));
            }
            Ok(x[1])
        };
        Ok(match self {
            Op::MatMul(m) => {
                let (a, b) = (inputs[0], inputs[1]);
                rank(a, 2, "a")?;
                rank(b, 2, "b")?;
                let (mm, ka) = if m.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
                let (kb, nn) = if m.trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
                if ka != kb {
                    return Err(err(
                        name,
                        alloc::format!("inner dimensions differ: a {a:?}, b {b:?} (trans_a {}, trans_b {})", m.trans_a, m.trans_b),
                    ));
                }
                vec![vec![mm, nn]]
            }
            Op::BiasAdd => {
                let c = channels(inputs[0])?;
                same(inputs[1], &[c], "bias vs channels")?;
                vec![inputs[0].to_vec()]
            }
            Op::Add | Op::Mul => {
                same(inputs[0], inputs[1], "operands")?;
                vec![inputs[0].to_vec()]
            }
            Op::Relu | Op::Clip(_) => vec![inputs[0].to_vec()],
            Op::Reshape { shape } => {
                if numel(shape) != numel(inputs[0]) {
                    return Err(err(name, alloc::format!("cannot reshape {:?} to {shape:?}", inputs[0])));
                }
                vec![shape.clone()]
            }
            Op::Conv2d(c) => {
                let (x, w) = (inputs[0], inputs[1]);
                rank(x, 4, "x")?;
                rank(w, 4, "weight")?;
                check_conv_channels(name, c, x[1], w)?;
                let (ho, wo) = conv_out(name, c, [x[2], x[3]], [w[2], w[3]])?;
                vec![vec![x[0], w[0], ho, wo]]
            }
            Op::Conv2dGradInput { conv, input_hw } => {
                let (dy, w) = (inputs[0], inputs[1]);
                rank(dy, 4, "dy")?;
                rank(w, 4, "weight")?;
                let c = w[1] * conv.groups;
                check_conv_channels(name, conv, c, w)?;
                let (ho, wo) = conv_out(name, conv, *input_hw, [w[2], w[3]])?;
                same(dy, &[dy[0], w[0], ho, wo], "dy vs forward output")?;
                vec![vec![dy[0], c, input_hw[0], input_hw[1]]]
            }
            Op::Conv2dGradWeight { conv, kernel_hw } => {
                let (dy, x) = (inputs[0], inputs[1]);
                rank(dy, 4, "dy")?;
                rank(x, 4, "x")?;
                if conv.groups == 0 || x[1] % conv.groups != 0 || dy[1] % conv.groups != 0 {
                    return Err(err(name, alloc::format!("channels {} / {} not divisible by groups {}", x[1], dy[1], conv.groups)));
                }
                let w = [dy[1], x[1] / conv.groups, kernel_hw[0], kernel_hw[1]];
                let (ho, wo) = conv_out(name, conv, [x[2], x[3]], *kernel_hw)?;
                same(dy, &[x[0], w[0], ho, wo], "dy vs forward output")?;
                vec![w.to_vec()]
            }
            Op::BatchNormTrain(_) => {
                let c = bn_channels(name, inputs[0])?;
                same(inputs[1], &[c], "gamma")?;
                same(inputs[2], &[c], "beta")?;
                vec![inputs[0].to_vec(), vec![c], vec![c], vec![c], vec![c]]
            }
            Op::BatchNormInfer(_) => {
                let c = bn_channels(name, inputs[0])?;
                for (i, what) in [(1, "gamma"), (2, "beta"), (3, "running_mean"), (4, "running_var")] {
                    same(inputs[i], &[c], what)?;
                }
                vec![inputs[0].to_vec()]
            }
            Op::BatchNormTrainGrad(_) | Op::BatchNormInferGrad(_) => {
                same(inputs[0], inputs[1], "dy vs x")?;
                let c = bn_channels(name, inputs[1])?;
                for (i, what) in [(2, "gamma"), (3, "mean"), (4, "invstd or var")] {
                    same(inputs[i], &[c], what)?;
                }
                vec![inputs[1].to_vec(), vec![c], vec![c]]
            }
            Op::GlobalAvgPool => {
                rank(inputs[0], 4, "x")?;
                vec![vec![inputs[0][0], inputs[0][1], 1, 1]]
            }
            Op::GlobalAvgPoolGrad { input_hw } => {
                let dy = inputs[0];
                rank(dy, 4, "dy")?;
                same(&dy[2..], &[1, 1], "dy spatial size")?;
                vec![vec![dy[0], dy[1], input_hw[0], input_hw[1]]]
            }
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
                let x = inputs[0];
                rank(x, 4, "x")?;
                let (ho, wo) = pool_out(name, p, [x[2], x[3]])?;
                vec![vec![x[0], x[1], ho, wo]]
            }
            Op::AvgPool2dGrad { pool, input_hw } => {
                let dy = inputs[0];
                rank(dy, 4, "dy")?;
                let (ho, wo) = pool_out(name, pool, *input_hw)?;
                same(&dy[2..], &[ho, wo], "dy spatial size")?;
                vec![vec![dy[0], dy[1], input_hw[0], input_hw[1]]]
            }
            Op::MaxPool2dGrad(p) => {
                let (dy, x) = (inputs[0], inputs[1]);
                rank(x, 4, "x")?;
                let (ho, wo) = pool_out(name, p, [x[2], x[3]])?;
                same(dy, &[x[0], x[1], ho, wo], "dy vs forward output")?;
                vec![x.to_vec()]
            }
            Op::SoftmaxCrossEntropy(r) => {
                let (logits, labels) = (inputs[0], inputs[1]);
                rank(logits, 2, "logits")?;
                same(labels, &[logits[0]], "labels vs batch")?;
                vec![loss_shape(*r, logits[0])]
            }
            Op::SoftmaxCrossEntropyGrad(r) => {
                let (dloss, logits, labels) = (inputs[0], inputs[1], inputs[2]);
                rank(logits, 2, "logits")?;
                same(labels, &[logits[0]], "labels vs batch")?;
                same(dloss, &loss_shape(*r, logits[0]), "dloss")?;
                vec![logits.to_vec()]
            }
            Op::Mse(r) => {
                let (pred, target) = (inputs[0], inputs[1]);
                same(pred, target, "pred vs target")?;
                if pred.is_empty() {
                    return Err(err(name, "pred must have a batch axis"));
                }
                vec![loss_shape(*r, pred[0])]
            }
            Op::MseGrad(r) => {
                let (dloss, pred, target) = (inputs[0], inputs[1], inputs[2]);
                same(pred, target, "pred vs target")?;
                if pred.is_empty() {
                    return Err(err(name, "pred must have a batch axis"));
                }
                same(dloss, &loss_shape(*r, pred[0]), "dloss")?;
                vec![pred.to_vec()]
            }
            Op::BiasGrad => vec![vec![channels(inputs[0])?]],
            Op::ReluGrad | Op::ClipGrad(_) => {
                same(inputs[0], inputs[1], "dy vs x")?;
                vec![inputs[0].to_vec()]
            }
            Op::AccumulateGrad => vec![inputs[0].to_vec()],
            Op::Fill { .. } => vec![],
            Op::GradScale(_) => vec![vec![]],
            Op::SgdUpdate(s) => {
                scalar(inputs[1], "lr")?;
                scalar(inputs[2], "step")?;
                if s.scaled {
                    scalar(inputs[3], "scale")?;
                }
                let g = inputs[0].to_vec();
                if s.momentum != 0.0 {
                    vec![g.clone(), g]
                } else {
                    vec![g]
                }
            }
            Op::AdamUpdate(a) => {
                scalar(inputs[1], "lr")?;
                scalar(inputs[2], "step")?;
                if a.scaled {
                    scalar(inputs[3], "scale")?;
                }
                let g = inputs[0].to_vec();
                vec![g.clone(), g.clone(), g]
            }
        })
    }
}

fn loss_shape(r: Reduction, batch: usize) -> Vec<usize> {
    match r {
        Reduction::Mean => vec![],
        Reduction::PerSample => vec![batch],
    }
}

fn bn_channels(name: &'static str, x: &[usize]) -> Result<usize, ShapeError> {
    if x.len() != 2 && x.len() != 4 {
        return Err(err(name, alloc::format!("input must have rank 2 or 4, got {x:?}")));
    }
    Ok(x[1])
}

fn check_conv_channels(name: &'static str, c: &Conv2d, in_channels: usize, w: &[usize]) -> Result<(), ShapeError> {
    if c.groups == 0 || !in_channels.is_multiple_of(c.groups) || !w[0].is_multiple_of(c.groups) {
        return Err(err(name, alloc::format!("channels in {in_channels} / out {} not divisible by groups {}", w[0], c.groups)));
    }
    if w[1] * c.groups != in_channels {
        return Err(err(name, alloc::format!("weight {w:?} expects {} input channels, input has {in_channels}", w[1] * c.groups)));
    }
    Ok(())
}

fn conv_out(name: &'static str, c: &Conv2d, hw: [usize; 2], k: [usize; 2]) -> Result<(usize, usize), ShapeError> {
    let h = window_out(hw[0], c.padding[0], c.padding[2], k[0], c.stride[0], c.dilation[0]);
    let w = window_out(hw[1], c.padding[1], c.padding[3], k[1], c.stride[1], c.dilation[1]);
    match (h, w) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(err(name, alloc::format!("kernel {k:?} does not fit input {hw:?} with {c:?}"))),
    }
}

fn pool_out(name: &'static str, p: &Pool2d, hw: [usize; 2]) -> Result<(usize, usize), ShapeError> {
    let h = window_out(hw[0], p.padding[0], p.padding[2], p.kernel[0], p.stride[0], 1);
    let w = window_out(hw[1], p.padding[1], p.padding[3], p.kernel[1], p.stride[1], 1);
    match (h, w) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(err(name, alloc::format!("window {:?} does not fit input {hw:?}", p.kernel))),
    }
}
