//! Volumes: 3-D convolution, max pooling, batch normalisation and global pooling on
//! `[N, C, D, H, W]` (`Conv3d`, `MaxPool3d`, `BatchNorm3d`, `AdaptiveAvgPool3d(1)` of video and
//! medical-imaging models), composed from the 2-D ops, so that autodiff, the planner, the CPU
//! kernels and the GPU backend cover them with nothing new in the engine.
//!
//! - A 3-D convolution is a sum over the kernel's depth taps of 2-D convolutions: the input,
//!   padded in depth and moved to `[N, D, C, H, W]`, is sliced per tap `i` at depths
//!   `i * dilation + od * stride` (one per output depth `od`) and folded to `[N * Do, C, H, W]`;
//!   the weight's slice `[O, C/g, kH, kW]` at depth `i` convolves it (the weight stays the
//!   model's parameter: its gradient flows back through the slices). The taps' results are
//!   added, the bias once, and unfolded to `[N, O, Do, Ho, Wo]`. The work is the 3-D
//!   convolution's; the slices cost `kD` copies of the input.
//! - Max pooling is the elementwise maximum over the depth taps of 2-D max pools of the same
//!   slices (the depth padding is -inf). At a tie between taps the gradient is split
//!   (`Max`'s rule), where PyTorch's goes to one of them. Average pooling is the mean over the
//!   taps of 2-D average pools (zero depth padding): the divisor is the window's, unless the
//!   window overlaps depth padding that `count_include_pad = 0` leaves out, which is refused.
//! - Batch normalisation and global pooling fold depth into height (`[N, C, D * H, W]`): the
//!   statistics and means run over the same elements.
//!
//! Transposed convolution, average pooling over depth padding it does not count, and a
//! `ceil_mode` that adds an output depth stay refused, with a message.

use super::{Ctx, Importer, Value};
use crate::ir::{TensorId, Values};
use crate::onnx::{Attribute, Node};
use pock_engine::ops::{BroadcastOp, DenseOp, MoveOp, Slice};

use super::ImportError;

/// The op types imported through their 2-D forms on a rank-5 input.
const VOLUME: &[&str] = &["Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"];

/// A window along depth: kernel extent, stride, dilation, padding before and after.
struct Depth {
    taps: usize,
    stride: usize,
    dilation: usize,
    pad: [usize; 2],
}

impl Depth {
    /// The output depth, or `None` when the dilated kernel does not fit the padded input.
    fn out(&self, d: usize) -> Option<usize> {
        let span = d + self.pad[0] + self.pad[1];
        let extent = (self.taps - 1) * self.dilation + 1;
        (span >= extent).then(|| (span - extent) / self.stride + 1)
    }
}

impl Importer<'_> {
    /// Imports the node through 2-D ops when its input is a volume; `None` for any other node.
    pub(super) fn lift_3d(&mut self, ctx: &Ctx) -> Option<Result<(), ImportError>> {
        let node = ctx.node;
        if !VOLUME.contains(&node.op_type.as_str()) {
            return None;
        }
        let rank = match self.values.get(node.inputs.first()?.as_str())? {
            Value::Tensor(t) => self.graph.shape(*t).len(),
            _ => return None,
        };
        (rank == 5).then(|| match node.op_type.as_str() {
            "Conv" | "MaxPool" | "AveragePool" => self.depth_taps(ctx),
            "BatchNormalization" | "GlobalAveragePool" | "GlobalMaxPool" => self.fold_depth(ctx),
            other => Err(ctx.err(format!(
                "3-D {other} (input of rank 5) is not supported; pock composes 3-D Conv, MaxPool, \
                 AveragePool, BatchNormalization and global pooling from 2-D ops"
            ))),
        })
    }

    /// Batch normalisation and global pooling over `[N, C, D * H, W]`.
    fn fold_depth(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let node = ctx.node;
        let name = node.name.clone();
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let folded = format!("{name}.fold_depth");
        let t = self.emit(ctx, &folded, DenseOp::Reshape { shape: vec![xs[0], xs[1], xs[2] * xs[3], xs[4]] }, &[x])?;
        self.values.insert(folded.clone(), Value::Tensor(t));
        let out = format!("{name}.out2d");
        let mut inputs = node.inputs.clone();
        inputs[0] = folded;
        let flat = Node {
            name: name.clone(),
            op_type: node.op_type.clone(),
            domain: node.domain.clone(),
            inputs,
            // BatchNormalization's other outputs keep their names: the 2-D import refuses them.
            outputs: core::iter::once(out.clone()).chain(node.outputs.iter().skip(1).cloned()).collect(),
            attributes: node.attributes.clone(),
        };
        self.import_node(&flat)?;
        let y = self.tensor(ctx, &out)?;
        let shape = if node.op_type == "BatchNormalization" { xs } else { vec![xs[0], xs[1], 1, 1, 1] };
        let y = self.emit(ctx, &format!("{name}.unfold_depth"), DenseOp::Reshape { shape }, &[y])?;
        self.set(ctx, 0, Value::Tensor(y))
    }

    /// The window attributes along depth, and the 2-D node's attributes (the last two axes).
    fn split_window(&self, ctx: &Ctx, xs: &[usize], kernel: [usize; 3]) -> Result<(Depth, Vec<(String, Attribute)>), ImportError> {
        let stride = ctx.sizes("strides", 3, 1)?;
        let dilation = ctx.sizes("dilations", 3, 1)?;
        if stride.contains(&0) || dilation.contains(&0) || kernel.contains(&0) {
            return Err(ctx.err(format!("kernel {kernel:?}, strides {stride:?} and dilations {dilation:?} must be at least 1")));
        }
        let pads = match ctx.string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" => ctx.sizes("pads", 6, 0)?,
            "VALID" => vec![0; 6],
            auto @ ("SAME_UPPER" | "SAME_LOWER") => {
                let mut pads = vec![0; 6];
                for a in 0..3 {
                    let extent = (kernel[a] - 1) * dilation[a] + 1;
                    let out = xs[2 + a].div_ceil(stride[a]).max(1);
                    let total = ((out - 1) * stride[a] + extent).saturating_sub(xs[2 + a]);
                    let small = total / 2;
                    (pads[a], pads[a + 3]) = if auto == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                }
                pads
            }
            other => return Err(ctx.err(format!("auto_pad '{other}' is not an ONNX value"))),
        };
        let depth = Depth { taps: kernel[0], stride: stride[0], dilation: dilation[0], pad: [pads[0], pads[3]] };
        let ints = |v: &[usize]| Attribute::Ints(v.iter().map(|&x| x as i64).collect());
        let mut attributes = vec![
            ("kernel_shape".to_string(), ints(&kernel[1..])),
            ("strides".to_string(), ints(&stride[1..])),
            ("dilations".to_string(), ints(&dilation[1..])),
            ("pads".to_string(), ints(&[pads[1], pads[2], pads[4], pads[5]])),
        ];
        for key in ["group", "ceil_mode", "count_include_pad"] {
            if let Some(v) = ctx.node.attribute(key) {
                attributes.push((key.to_string(), v.clone()));
            }
        }
        Ok((depth, attributes))
    }

    /// Conv, MaxPool and AveragePool: one 2-D node per depth tap on `[N * Do, C, H, W]`, then
    /// their sum (Conv), maximum (MaxPool) or mean (AveragePool), unfolded to `[N, O, Do, Ho, Wo]`.
    fn depth_taps(&mut self, ctx: &Ctx) -> Result<(), ImportError> {
        let node = ctx.node;
        let conv = node.op_type == "Conv";
        let max = node.op_type == "MaxPool";
        let name = node.name.clone();
        if node.outputs.get(1).is_some_and(|s| !s.is_empty()) {
            return Err(ctx.err("its Indices output is not supported"));
        }
        let x = self.tensor(ctx, ctx.input(0)?)?;
        let xs = self.graph.shape(x).to_vec();
        let (w, kernel) = if conv {
            let w = self.tensor(ctx, ctx.input(1)?)?;
            let ws = self.graph.shape(w).to_vec();
            if ws.len() != 5 {
                return Err(ctx.err(format!("a 3-D convolution needs a weight of rank 5 (input {xs:?}, weight {ws:?})")));
            }
            if let Some(Attribute::Ints(k)) = node.attribute("kernel_shape") {
                if k.iter().map(|&d| d as usize).ne(ws[2..].iter().copied()) {
                    return Err(ctx.err(format!("attribute 'kernel_shape' {k:?} differs from the weight's shape {ws:?}")));
                }
            }
            (Some((w, ws.clone())), [ws[2], ws[3], ws[4]])
        } else {
            let k = ctx.sizes("kernel_shape", 3, 0)?;
            if ctx.int("storage_order", 0)? != 0 {
                return Err(ctx.err("column-major storage_order is not supported"));
            }
            (None, [k[0], k[1], k[2]])
        };
        let (depth, attributes) = self.split_window(ctx, &xs, kernel)?;
        let Some(out_d) = depth.out(xs[2]) else {
            return Err(ctx.err(format!("window {kernel:?} does not fit input {xs:?} with its padding")));
        };
        if !conv && !max && depth.pad != [0, 0] && ctx.int("count_include_pad", 0)? == 0 {
            return Err(ctx.err(
                "3-D average pooling with depth padding that count_include_pad = 0 leaves out of the divisor is not \
                 supported; pad the input explicitly, or set count_include_pad = 1",
            ));
        }
        if !conv && ctx.int("ceil_mode", 0)? != 0 {
            let span = xs[2] + depth.pad[0] + depth.pad[1];
            if !(span - ((depth.taps - 1) * depth.dilation + 1)).is_multiple_of(depth.stride) {
                return Err(ctx.err("ceil_mode that adds an output depth is not supported for 3-D pooling"));
            }
        }
        let (n, c) = (xs[0], xs[1]);
        // Padded in depth (zeros for Conv, -inf for MaxPool), then [N, D, C, H, W].
        let mut v = x;
        if depth.pad != [0, 0] {
            let pads = vec![0, 0, depth.pad[0], 0, 0, 0, 0, depth.pad[1], 0, 0];
            let value = if max { f32::NEG_INFINITY } else { 0.0 };
            v = self.emit(ctx, &format!("{name}.pad_depth"), MoveOp::Pad { pads, value }, &[v])?;
        }
        let v = self.emit(ctx, &format!("{name}.depth_first"), MoveOp::Transpose { perm: vec![0, 2, 1, 3, 4] }, &[v])?;
        let mut acc: Option<TensorId> = None;
        for i in 0..depth.taps {
            let start = (i * depth.dilation) as i64;
            let slice = Slice {
                axes: vec![1],
                starts: vec![start],
                ends: vec![start + ((out_d - 1) * depth.stride) as i64 + 1],
                steps: vec![depth.stride as i64],
            };
            let s = self.emit(ctx, &format!("{name}.tap{i}.slice"), MoveOp::Slice(slice), &[v])?;
            let s = self.emit(ctx, &format!("{name}.tap{i}.2d"), DenseOp::Reshape { shape: vec![n * out_d, c, xs[3], xs[4]] }, &[s])?;
            let mut inputs = vec![format!("{name}.tap{i}.2d")];
            self.values.insert(inputs[0].clone(), Value::Tensor(s));
            if let Some((w, ws)) = &w {
                let slice = Slice { axes: vec![2], starts: vec![i as i64], ends: vec![i as i64 + 1], steps: vec![1] };
                let wi = self.emit(ctx, &format!("{name}.w{i}"), MoveOp::Slice(slice), &[*w])?;
                let wi = self.emit(ctx, &format!("{name}.w{i}.2d"), DenseOp::Reshape { shape: vec![ws[0], ws[1], ws[3], ws[4]] }, &[wi])?;
                inputs.push(format!("{name}.w{i}.2d"));
                self.values.insert(inputs[1].clone(), Value::Tensor(wi));
                // The bias is added once, by the first tap.
                if let Some(b) = ctx.optional_input(2).filter(|_| i == 0) {
                    inputs.push(b.to_string());
                }
            }
            let out = format!("{name}.tap{i}.out");
            let tap = Node {
                name: format!("{name}.tap{i}"),
                op_type: node.op_type.clone(),
                domain: node.domain.clone(),
                inputs,
                outputs: vec![out.clone()],
                attributes: attributes.clone(),
            };
            self.import_node(&tap)?;
            let y = self.tensor(ctx, &out)?;
            acc = Some(match acc {
                None => y,
                Some(a) if max => self.emit(ctx, &format!("{name}.max{i}"), BroadcastOp::Max, &[a, y])?,
                Some(a) => self.emit(ctx, &format!("{name}.sum{i}"), BroadcastOp::Add, &[a, y])?,
            });
        }
        let mut y = acc.ok_or_else(|| ctx.err("the kernel has no depth"))?;
        if !conv && !max && depth.taps > 1 {
            let share = self.graph.typed_constant(format!("{name}.per_tap"), vec![], Values::F32(vec![1.0 / depth.taps as f32]));
            y = self.emit(ctx, &format!("{name}.mean"), BroadcastOp::Mul, &[y, share])?;
        }
        let ys = self.graph.shape(y).to_vec();
        let y = self.emit(ctx, &format!("{name}.unfold"), DenseOp::Reshape { shape: vec![n, out_d, ys[1], ys[2], ys[3]] }, &[y])?;
        let y = self.emit(ctx, &format!("{name}.channels_first"), MoveOp::Transpose { perm: vec![0, 2, 1, 3, 4] }, &[y])?;
        self.set(ctx, 0, Value::Tensor(y))
    }
}
