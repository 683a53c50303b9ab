//! `--quantize int8`: rewrites a float model into the quant family's int8 ops (the Tiny Training
//! Engine's real-quantized graph, Lin et al. 2022; conventions in `pock_engine::ops::QuantOp`).
//!
//! What it quantizes: a chain of Linear layers (a `MatMul` with a transposed `[out, in]` weight,
//! a `BiasAdd`, and optionally a ReLU or ReLU6) from the model's data input to its output, such as
//! `zoo:mlp`. Anything else is refused with the node that does not fit (convolutions and pooling
//! are not quantized yet).
//!
//! How:
//! - calibration: the float model runs (the f32 interpreter over the reference kernels) on the
//!   calibration rows, batch by batch; each quantized activation (the input, each hidden layer's
//!   output after its activation) gets a per-tensor scale and zero point from its observed range,
//!   widened to include 0: `scale = (max - min) / 255`, `zero_point = round(-128 - min / scale)`;
//! - weights: per output channel, `w_scale[o] = max |W[o, :]| / 127` (times the headroom for a
//!   trained weight) and `w = round(W / w_scale)`;
//!   biases in the int32 domain, `b = B / (x.scale * w_scale[o])`;
//! - each layer becomes one `QLinear` whose output is int8 (its activation fused as a clamp), the
//!   last one's f32 logits for the loss;
//! - it runs after the update scheme: a frozen weight is stored as int8 (one byte per weight in
//!   the plan's weight section); a trained one stays an f32 master copy of its integer values
//!   (see `QuantOp`), its scale leaving [`TRAINED_WEIGHT_HEADROOM`].

use pock_engine::ops::{Clip, DenseOp, MatMul, Op, QLinear, QOutput, QParams, QuantOp};

use crate::error::{CompileError, Result};
use crate::interp::Interpreter;
use crate::ir::{DType, Graph, Phase, Program, Role, TensorDef, TensorId, Values};
use crate::stages::ForwardGraph;

/// How much room a trained weight's scale leaves for it to grow: its int8 range covers 8 times
/// its initial largest magnitude per output channel (3 of its 8 bits). The integer weights clamp
/// at +-127, and the classifier of a freshly initialised model must grow well past its initial
/// values (with a scale fitted to them alone, the sensor MLP's loss stalls; BENCHMARKS.md "Int8
/// training"). Frozen weights use the whole range.
pub const TRAINED_WEIGHT_HEADROOM: f32 = 8.0;

/// What `--quantize int8` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Options {
    /// Calibration samples of the model's (only) data input, row-major `[samples, features...]`:
    /// at least one batch; whole batches are used.
    pub calibration: Vec<f32>,
    /// The shape of one calibration sample (the `.npz` array's shape without its first axis),
    /// checked against the model input's.
    pub sample_shape: Vec<usize>,
    /// Scale the weight and bias gradients as QAS does (on by default; off only for comparison).
    pub qas: bool,
}

/// Per-tensor parameters covering `[min, max]` widened to include 0.
pub fn qparams(min: f32, max: f32) -> QParams {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    QParams { scale, zero_point }
}

/// One Linear layer of the chain.
struct Layer {
    /// The MatMul node's name (the QLinear node takes it).
    name: String,
    weight: TensorId,
    bias: TensorId,
    /// The last node's output: the BiasAdd's, or the activation's.
    output: TensorId,
    activation: Activation,
}

#[derive(Clone, Copy, PartialEq)]
enum Activation {
    None,
    Relu,
    Relu6,
}

fn refuse(node: &crate::ir::Node, why: &str) -> CompileError {
    CompileError::Node {
        node: node.name.clone(),
        op: node.op.name(),
        message: format!(
            "--quantize int8 quantizes chains of Linear layers (MatMul with a transposed [out, in] weight, BiasAdd, then ReLU, \
             ReLU6 or nothing), such as zoo:mlp; {why}. Compile without --quantize (convolutions and pooling are not quantized yet)"
        ),
    }
}

/// Finds the chain of Linear layers, or says which node does not fit.
fn layers(forward: &ForwardGraph) -> Result<Vec<Layer>> {
    let g = &forward.graph;
    if forward.inputs.len() != 1 || g.tensor(forward.inputs[0]).dtype != DType::F32 {
        return Err(CompileError::Option("--quantize int8 needs a model with one float32 data input".into()));
    }
    let param = |t: TensorId| matches!(g.tensor(t).role, Role::Parameter { .. }) && g.tensor(t).init_f32().is_some();
    let mut cur = forward.inputs[0];
    let mut out = Vec::new();
    let mut i = 0;
    let nodes = &g.nodes;
    while i < nodes.len() {
        let n = &nodes[i];
        let Op::Dense(DenseOp::MatMul(MatMul { trans_a: false, trans_b: true })) = n.op else {
            return Err(refuse(n, "this node is not such a MatMul"));
        };
        if n.inputs[0] != cur || !param(n.inputs[1]) {
            return Err(refuse(n, "its input is not the previous layer's output, or its weight is not a parameter"));
        }
        let Some(add) = nodes.get(i + 1).filter(|a| matches!(a.op, Op::Dense(DenseOp::BiasAdd)) && a.inputs[0] == n.outputs[0]) else {
            return Err(refuse(n, "it is not followed by a BiasAdd"));
        };
        if !param(add.inputs[1]) {
            return Err(refuse(add, "its bias is not a parameter"));
        }
        let mut layer =
            Layer { name: n.name.clone(), weight: n.inputs[1], bias: add.inputs[1], output: add.outputs[0], activation: Activation::None };
        i += 2;
        if let Some(act) = nodes.get(i).filter(|a| a.inputs.first() == Some(&layer.output)) {
            layer.activation = match act.op {
                Op::Dense(DenseOp::Relu) => Activation::Relu,
                Op::Dense(DenseOp::Clip(Clip { min, max })) if min == 0.0 && max == 6.0 => Activation::Relu6,
                _ => return Err(refuse(act, "this node is not a ReLU or ReLU6")),
            };
            layer.output = act.outputs[0];
            i += 1;
        }
        cur = layer.output;
        out.push(layer);
    }
    let Some(last) = out.last() else {
        return Err(CompileError::Option("--quantize int8: the model has no Linear layer".into()));
    };
    if last.output != forward.output || last.activation != Activation::None {
        return Err(CompileError::Option(
            "--quantize int8: the model's output must be its last Linear layer's output, without an activation (the logits)".into(),
        ));
    }
    Ok(out)
}

/// The observed `[min, max]` of the input and of each layer's output, over whole batches of the
/// calibration rows.
fn calibrate(forward: &ForwardGraph, layers: &[Layer], options: &Int8Options) -> Result<Vec<(f32, f32)>> {
    let g = &forward.graph;
    let input = forward.inputs[0];
    if options.sample_shape != g.shape(input)[1..] {
        return Err(CompileError::Option(format!(
            "--quantize int8: the calibration samples have shape {:?}, the model's input '{}' takes {:?} per sample; pass --calib data made for this model",
            options.sample_shape,
            g.tensor(input).name,
            &g.shape(input)[1..]
        )));
    }
    let rows = &options.calibration[..];
    let per_batch = g.tensor(input).numel();
    let batches = rows.len().checked_div(per_batch).unwrap_or(0);
    if batches == 0 || !rows.len().is_multiple_of(g.shape(input)[1..].iter().product::<usize>().max(1)) {
        return Err(CompileError::Option(format!(
            "--quantize int8: the calibration data must hold whole samples of {:?} and at least one batch ({} values); it has {} values",
            &g.shape(input)[1..],
            per_batch,
            rows.len()
        )));
    }
    let watched: Vec<TensorId> = std::iter::once(input).chain(layers.iter().map(|l| l.output)).collect();
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); watched.len()];
    for b in 0..batches {
        let mut interp = Interpreter::<f32>::new(g);
        interp.set(input, rows[b * per_batch..(b + 1) * per_batch].to_vec());
        interp.run(&g.nodes)?;
        for (r, &t) in ranges.iter_mut().zip(&watched) {
            for &v in interp.get(t).unwrap_or(&[]) {
                if v.is_finite() {
                    r.0 = r.0.min(v);
                    r.1 = r.1.max(v);
                }
            }
        }
    }
    Ok(ranges)
}

/// Rewrites `forward` into int8 ops calibrated on `options.calibration` (see the module docs).
pub fn quantize_int8(forward: ForwardGraph, options: &Int8Options) -> Result<ForwardGraph> {
    if !forward.graph.trained_rows.is_empty() {
        return Err(CompileError::Option(
            "--quantize int8 does not combine with partial-channel updates ([[channels]] in a scheme file)".into(),
        ));
    }
    let layers = layers(&forward)?;
    let ranges = calibrate(&forward, &layers, options)?;
    let old = &forward.graph;
    let mut g = Graph::new();
    let input_def = old.tensor(forward.inputs[0]).clone();
    let input_name = input_def.name.clone();
    let input = g.add_tensor(input_def);
    let mut x_params = qparams(ranges[0].0, ranges[0].1);
    let mut x = g.emit(format!("{input_name}.quantize"), QuantOp::Quantize(x_params), &[input], Phase::Forward, Program::Train)?[0];
    let mut output = x;
    for (k, layer) in layers.iter().enumerate() {
        let (wdef, bdef) = (old.tensor(layer.weight), old.tensor(layer.bias));
        let (outs, inner) = (wdef.shape[0], wdef.shape.get(1).copied().unwrap_or(0));
        let (w, b) = (wdef.init_f32().unwrap_or(&[]), bdef.init_f32().unwrap_or(&[]));
        let trained = wdef.role == (Role::Parameter { trainable: true });
        let mut w_scale = vec![1.0f32; outs];
        let mut wq = vec![0.0f32; w.len()];
        let mut bq = vec![0.0f32; outs];
        for o in 0..outs {
            let row = &w[o * inner..(o + 1) * inner];
            let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if m > 0.0 && m.is_finite() {
                w_scale[o] = m / 127.0 * if trained { TRAINED_WEIGHT_HEADROOM } else { 1.0 };
            }
            for (q, &v) in wq[o * inner..(o + 1) * inner].iter_mut().zip(row) {
                *q = (v / w_scale[o]).round().clamp(-127.0, 127.0);
            }
            bq[o] = b[o] / (x_params.scale * w_scale[o]);
        }
        // The i32 accumulator must hold inner * 255 * 127 plus the bias.
        let bound = inner as f64 * 255.0 * 127.0 + bq.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        if bound >= f64::from(i32::MAX) || !bound.is_finite() {
            return Err(CompileError::Option(format!(
                "--quantize int8: layer '{}' ({inner} inputs) could overflow its int32 accumulator (bound {bound:.3e}); it needs fewer than {} inputs and smaller biases",
                layer.name,
                i32::MAX as usize / (255 * 127)
            )));
        }
        // A frozen weight is stored as int8; a trained one keeps the f32 master copy.
        let weight = if trained {
            g.add_tensor(TensorDef { init: Some(Values::F32(wq)), ..wdef.clone() })
        } else {
            let q = wq.iter().map(|&v| v as i8).collect();
            g.add_tensor(TensorDef { init: Some(Values::I8(q)), dtype: DType::I8, ..wdef.clone() })
        };
        let bias = g.add_tensor(TensorDef { init: Some(Values::F32(bq)), ..bdef.clone() });
        let scale =
            g.constant(format!("{}.weight_scale", wdef.name.rsplit_once('.').map_or(wdef.name.as_str(), |(l, _)| l)), vec![outs], w_scale);
        let last = k + 1 == layers.len();
        let out = if last {
            QOutput::F32
        } else {
            let (min, max) = ranges[k + 1];
            let q = qparams(min, max);
            let lo = match layer.activation {
                Activation::Relu | Activation::Relu6 => q.zero_point.max(-128),
                Activation::None => -128,
            };
            let hi = match layer.activation {
                Activation::Relu6 => (q.zero_point + (6.0 / q.scale).round() as i32).min(127),
                _ => 127,
            };
            QOutput::Int8 { q, lo: lo as i8, hi: hi as i8 }
        };
        let op = QuantOp::Linear(QLinear { x: x_params, out, qas: options.qas });
        output = g.emit(layer.name.clone(), op, &[x, weight, scale, bias], Phase::Forward, Program::Train)?[0];
        if let QOutput::Int8 { q, .. } = out {
            x_params = q;
        }
        x = output;
    }
    g.validate()?;
    Ok(ForwardGraph { name: forward.name, graph: g, inputs: vec![input], output, task: forward.task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qparams_cover_the_range_and_zero() {
        let q = qparams(0.0, 2.55);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 0.01).abs() < 1e-7);
        // -128 - (-1 / (2 / 255)) = -0.5, rounded away from zero.
        let q = qparams(-1.0, 1.0);
        assert_eq!(q.zero_point, -1);
        // A range that excludes 0 is widened to include it.
        let q = qparams(1.0, 3.0);
        assert_eq!(q.zero_point, -128);
        let q = qparams(0.0, 0.0);
        assert_eq!(q, QParams { scale: 1.0, zero_point: -128 });
    }
}
