//! Frozen BatchNorm folded into the convolution before it (`--batch-norm fold`, the default).
//!
//! A frozen BatchNorm is a per-channel affine map, `y = s * (x - mean) + beta` with
//! `s = gamma / sqrt(var + eps)`, so after a convolution `x = W * input + b` it can be folded into
//! the convolution: `y = (W * s) * input + ((b - mean) * s + beta)`. The pass rewrites the forward
//! graph before autodiff, so nothing of the BatchNorm is left to differentiate or to keep for the
//! backward pass: the convolution's weight tensor holds `W * s` under its own name, and the
//! folded shift is a trainable conv bias (a `BiasAdd`) that takes the BatchNorm's *bias* name
//! (`features.0.1.bias`), so `--update bias` and `--train '*.bias'` still select it. gamma's
//! role passes to the folded weight; gamma, the running statistics and the conv's own bias are
//! dropped from the graph and recorded in [`FoldedNorm`] for `pock export`, which writes the model
//! back in its original form with [`unfold`].
//!
//! A pair is folded when the conv's output (or its `BiasAdd`'s) feeds nothing but the BatchNorm,
//! the conv weight and every BatchNorm parameter and statistic are parameters with values read by
//! no other node, and every channel's scale is finite and non-zero (a zero gamma could not be
//! unfolded again). Any other BatchNorm stays a frozen affine BatchNorm (`BatchNormInfer`, gamma
//! and beta trainable), as with `--batch-norm frozen`.

use std::collections::HashMap;

use pock_engine::ops::{ConvOp, DenseOp, NormOp, Op};
use pock_engine::plan::{FoldedNorm, NamedValues};

use crate::ir::{Graph, Node, Role, TensorId};

/// Folds every foldable training-form BatchNorm of `graph`'s forward nodes into its conv (see the
/// module documentation); `kept` are tensors that must stay as they are (the model's inputs and
/// output). Returns what was folded, in graph order. BatchNorms it cannot fold are left alone.
pub fn fold_batch_norms(graph: &mut Graph, kept: &[TensorId]) -> Vec<FoldedNorm> {
    let mut readers: HashMap<TensorId, usize> = HashMap::new();
    let mut producer: HashMap<TensorId, usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        for &t in &node.inputs {
            *readers.entry(t).or_default() += 1;
        }
        for &t in &node.outputs {
            producer.entry(t).or_insert(i);
        }
    }
    for &t in kept {
        *readers.entry(t).or_default() += 1;
    }
    let only_reader = |t: TensorId| readers.get(&t) == Some(&1);

    let mut folds = Vec::new();
    let mut removed = vec![false; graph.nodes.len()];
    for bn_index in 0..graph.nodes.len() {
        let Some(plan) = fold_plan(graph, bn_index, &producer, &only_reader) else { continue };
        let FoldPlan { conv, bias_add, bn, scale } = plan;
        let bn_node = graph.nodes[bn].clone();
        let Op::Norm(NormOp::BatchNormTrain(b)) = bn_node.op else { continue };
        let (gamma, beta) = (bn_node.inputs[1], bn_node.inputs[2]);
        let (mean, var) = (bn_node.outputs[3], bn_node.outputs[4]);
        let weight = graph.nodes[conv].inputs[1];
        let conv_bias = bias_add.map(|i| graph.nodes[i].inputs[1]);
        let values = |graph: &Graph, t: TensorId| graph.tensor(t).init_f32().unwrap_or_default().to_vec();
        let named = |graph: &Graph, t: TensorId| NamedValues { name: graph.tensor(t).name.clone(), values: values(graph, t) };
        let record = FoldedNorm {
            conv_weight: graph.tensor(weight).name.clone(),
            conv_bias: conv_bias.map(|t| named(graph, t)),
            gamma: named(graph, gamma),
            beta: graph.tensor(beta).name.clone(),
            running_mean: named(graph, mean),
            running_var: named(graph, var),
            eps: b.eps,
        };

        // W' = W * s per output channel.
        let mut w = values(graph, weight);
        let per_channel = w.len() / scale.len();
        for (c, chunk) in w.chunks_mut(per_channel).enumerate() {
            chunk.iter_mut().for_each(|v| *v *= scale[c]);
        }
        graph.tensor_mut(weight).init = Some(w.into());
        // b' = (b - mean) * s + beta, held by beta's tensor (its name, its trainability).
        let b0 = record.conv_bias.as_ref().map(|b| b.values.clone()).unwrap_or_else(|| vec![0.0; scale.len()]);
        let shift: Vec<f32> =
            (0..scale.len()).map(|c| (b0[c] - record.running_mean.values[c]) * scale[c] + values(graph, beta)[c]).collect();
        graph.tensor_mut(beta).init = Some(shift.into());

        // The pair becomes conv + BiasAdd(beta), the BiasAdd writing the BatchNorm's output.
        let y = bn_node.outputs[0];
        match bias_add {
            Some(i) => {
                graph.nodes[i].inputs[1] = beta;
                graph.nodes[i].outputs = vec![y];
                removed[bn] = true;
            }
            None => {
                let conv_out = graph.nodes[conv].outputs[0];
                graph.nodes[bn] = Node { op: DenseOp::BiasAdd.into(), inputs: vec![conv_out, beta], outputs: vec![y], ..bn_node.clone() };
            }
        }
        // What the fold consumed no longer exists for training: it is recorded for export only.
        for t in [Some(gamma), Some(mean), Some(var), conv_bias].into_iter().flatten() {
            graph.tensor_mut(t).role = Role::Constant;
        }
        folds.push(record);
    }
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        !removed[i - 1]
    });
    folds
}

/// The nodes of a foldable (conv, optional BiasAdd, BatchNorm) chain ending at `bn`, and the
/// per-channel scale, or `None` where the BatchNorm must stay.
struct FoldPlan {
    conv: usize,
    bias_add: Option<usize>,
    bn: usize,
    scale: Vec<f32>,
}

fn fold_plan(graph: &Graph, bn: usize, producer: &HashMap<TensorId, usize>, only_reader: &dyn Fn(TensorId) -> bool) -> Option<FoldPlan> {
    let node = &graph.nodes[bn];
    let Op::Norm(NormOp::BatchNormTrain(b)) = node.op else { return None };
    let x = node.inputs[0];
    if !only_reader(x) || graph.shape(x).len() != 4 {
        return None;
    }
    let mut at = *producer.get(&x)?;
    let mut bias_add = None;
    if matches!(graph.nodes[at].op, Op::Dense(DenseOp::BiasAdd)) {
        let add = &graph.nodes[at];
        let (conv_out, bias) = (add.inputs[0], add.inputs[1]);
        if !only_reader(conv_out) || !is_parameter_with_values(graph, bias) || !only_reader(bias) {
            return None;
        }
        bias_add = Some(at);
        at = *producer.get(&conv_out)?;
    }
    let conv = &graph.nodes[at];
    if !matches!(conv.op, Op::Conv(ConvOp::Conv2d(_))) {
        return None;
    }
    let weight = conv.inputs[1];
    if !is_parameter_with_values(graph, weight) || !only_reader(weight) {
        return None;
    }
    let (gamma, beta) = (node.inputs[1], node.inputs[2]);
    let (mean, var) = (node.outputs[3], node.outputs[4]);
    if ![gamma, beta].iter().all(|&t| is_parameter_with_values(graph, t) && only_reader(t)) {
        return None;
    }
    // The running statistics are in-place outputs of this node only; nothing else may read them.
    let stat_ok = |t: TensorId| graph.tensor(t).role == Role::RunningStat && graph.tensor(t).init_f32().is_some() && !read_by_any(graph, t);
    if !stat_ok(mean) || !stat_ok(var) {
        return None;
    }
    let (gamma_v, var_v) = (graph.tensor(gamma).init_f32()?, graph.tensor(var).init_f32()?);
    let scale: Vec<f32> = gamma_v.iter().zip(var_v).map(|(&g, &v)| g / (v + b.eps).sqrt()).collect();
    if scale.iter().any(|s| !s.is_finite() || *s == 0.0) {
        return None;
    }
    Some(FoldPlan { conv: at, bias_add, bn, scale })
}

fn is_parameter_with_values(graph: &Graph, t: TensorId) -> bool {
    let def = graph.tensor(t);
    matches!(def.role, Role::Parameter { .. }) && def.init_f32().is_some_and(|v| v.len() == def.numel())
}

fn read_by_any(graph: &Graph, t: TensorId) -> bool {
    graph.nodes.iter().any(|n| n.inputs.contains(&t))
}

/// The original conv weight and BatchNorm shift (each present when its folded value was given).
pub type Unfolded = (Option<Vec<f32>>, Option<Vec<f32>>);

/// The model's original weight and BatchNorm shift from a folded pair's trained values: `W = W'/s`
/// (`folded_weight`, the plan's `conv_weight`) and `beta = b' - (b - mean) * s` (`folded_bias`,
/// the plan's `beta`). Either may be absent (an export that leaves frozen values as the source
/// has them). An error says which recorded length does not match.
pub fn unfold(fold: &FoldedNorm, folded_weight: Option<&[f32]>, folded_bias: Option<&[f32]>) -> Result<Unfolded, String> {
    let c = fold.gamma.values.len();
    let lengths = [("running_mean", fold.running_mean.values.len()), ("running_var", fold.running_var.values.len())]
        .into_iter()
        .chain(fold.conv_bias.as_ref().map(|b| ("conv bias", b.values.len())))
        .chain(folded_bias.map(|b| ("folded bias", b.len())));
    for (what, len) in lengths {
        if len != c {
            return Err(format!("the folded BatchNorm '{}' records {c} channels but its {what} has {len} values", fold.beta));
        }
    }
    let scale: Vec<f32> = fold.gamma.values.iter().zip(&fold.running_var.values).map(|(&g, &v)| g / (v + fold.eps).sqrt()).collect();
    let weight = match folded_weight {
        Some(w) if c == 0 || w.len() % c != 0 => {
            return Err(format!("the folded conv weight '{}' has {} values, not a multiple of its {c} channels", fold.conv_weight, w.len()))
        }
        Some(w) => {
            let per_channel = w.len() / c.max(1);
            let scale = &scale;
            Some(w.chunks(per_channel.max(1)).enumerate().flat_map(|(ch, chunk)| chunk.iter().map(move |v| v / scale[ch])).collect())
        }
        None => None,
    };
    let bias = folded_bias.map(|b| {
        (0..c)
            .map(|ch| {
                let b0 = fold.conv_bias.as_ref().map_or(0.0, |cb| cb.values[ch]);
                b[ch] - (b0 - fold.running_mean.values[ch]) * scale[ch]
            })
            .collect()
    });
    Ok((weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(gamma: Vec<f32>, mean: Vec<f32>, var: Vec<f32>, conv_bias: Option<Vec<f32>>) -> FoldedNorm {
        let nv = |name: &str, values| NamedValues { name: name.into(), values };
        FoldedNorm {
            conv_weight: "c.weight".into(),
            conv_bias: conv_bias.map(|v| nv("c.bias", v)),
            gamma: nv("bn.weight", gamma),
            beta: "bn.bias".into(),
            running_mean: nv("bn.running_mean", mean),
            running_var: nv("bn.running_var", var),
            eps: 1e-5,
        }
    }

    /// Unfolding recovers W and beta on hand-computed values.
    #[test]
    fn unfold_inverts_the_fold_per_channel() {
        // Channel 0: s = 2 / sqrt(4) = 1 (eps aside), channel 1: s = -1 / sqrt(1) = -1.
        let f = record(vec![2.0, -1.0], vec![0.5, -1.0], vec![4.0 - 1e-5, 1.0 - 1e-5], Some(vec![1.0, 2.0]));
        let (w, b) = unfold(&f, Some(&[1.0, 2.0, 3.0, 4.0]), Some(&[10.0, 20.0])).unwrap();
        let (w, b) = (w.unwrap(), b.unwrap());
        for (got, want) in w.iter().zip([1.0, 2.0, -3.0, -4.0]) {
            assert!((got - want).abs() < 1e-5, "{w:?}");
        }
        // beta = b' - (b - mean) * s: 10 - 0.5 * 1 = 9.5; 20 - 3 * -1 = 23.
        for (got, want) in b.iter().zip([9.5, 23.0]) {
            assert!((got - want).abs() < 1e-5, "{b:?}");
        }
    }

    #[test]
    fn unfold_refuses_mismatched_lengths() {
        let f = record(vec![1.0, 1.0], vec![0.0], vec![1.0, 1.0], None);
        assert!(unfold(&f, None, None).unwrap_err().contains("running_mean"));
        let f = record(vec![1.0, 1.0], vec![0.0, 0.0], vec![1.0, 1.0], None);
        assert!(unfold(&f, Some(&[1.0, 2.0, 3.0]), None).unwrap_err().contains("multiple"));
    }
}
