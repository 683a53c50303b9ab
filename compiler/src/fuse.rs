//! The fusion pass. Forward ([`fuse_conv_bias_act`]): a convolution, the bias added to its output
//! and the ReLU/ReLU6 after it become one `Conv2dBiasAct` node, so neither the convolution's raw
//! output nor its biased copy is ever written to memory; a `MatMul` (a Linear layer) with its bias
//! and activation likewise becomes `MatMulBiasAct`. Backward ([`fuse_grad_input_mask`]): the
//! ReLU/ReLU6 mask gradient joins the conv input gradient that produces its `dy`.
//!
//! ```text
//! t1 = Conv2d(x, w)
//! t2 = BiasAdd(t1, b)           ==>       y = Conv2dBiasAct{act}(x, w, b)
//! y  = Relu(t2) | Clip(t2)
//! ```
//!
//! Without fusion the planner keeps `t1` and `t2` (and `t2` and `y`) alive together, since no op
//! runs in place: with BatchNorm folded into the convolutions (the default) every conv has such a
//! bias, and in MobileNetV2's early blocks two 12 MiB maps coexist at the forward peak, which is
//! the whole arena of a sparse plan. The fused op adds the bias after the convolution's whole sum
//! and applies the activation's own formula, so its result equals the three ops bit for bit (the
//! engine's `fused_conv_equals_conv_then_bias_then_activation_bit_for_bit`, and `tests/fuse.rs`
//! over whole training runs).
//!
//! With BatchNorm in training mode (`--batch-norm train`), the convolution has no bias to fuse
//! and the activation follows the BatchNorm instead: [`fuse_norm_act`] makes the two one
//! `BatchNormTrainAct` node, which writes `act(batch_norm(x))` in the pass that normalises.
//!
//! Where it runs ([`fuse`], every rewrite): after autodiff, the optimizer and the mask pass,
//! before scheduling and memory planning (`autodiff::build_training`). After autodiff, because then the rule sees every
//! reader of the intermediates, backward ones included, and the gradient rules keep applying to
//! the plain ops; the chain's gradients read nothing the pass removes (BiasAdd's gradient reads
//! nothing, ReLU/ReLU6 gradients read the activation's output or its 1-bit mask, the conv's
//! gradients read `x` and `w`). After the mask pass, because the mask packs from the activation's
//! output `y`, which the fused op still writes and the next layer reads anyway: no float
//! intermediate survives and the mask needs no second output.
//!
//! The rule: a forward `Conv2d` whose output is read by exactly one node in the whole graph, a
//! `BiasAdd` of the same program with that output as `x`, is fused with it; the activation joins
//! when the `BiasAdd` output is read by exactly one node, a `Relu` or `Clip`. Intermediates that
//! are program outputs (`kept`) are never removed. Applies to the Train and Eval programs alike.

use pock_engine::ops::{Activation, ConvOp, DenseOp, MaskOp, NormOp, Op};

use crate::ir::{Graph, Node, Phase, Program, Role, TensorId};

/// Every fusion, forward then backward; returns how many nodes the forward ones (conv or matmul
/// chains, then BatchNorm with its activation) and the backward one made.
pub fn fuse(graph: &mut Graph, kept: &[TensorId]) -> (usize, usize) {
    let forward = fuse_conv_bias_act(graph, kept) + fuse_norm_act(graph, kept);
    let backward = fuse_grad_input_mask(graph, kept);
    (forward, backward)
}

/// A training-mode BatchNorm and the ReLU/ReLU6 that alone reads its output become one
/// `BatchNormTrainAct` node: the normalised output is never written by itself, and it and the
/// activation's output are never alive together. The rule: a `BatchNormTrain` whose output `y` is
/// a transient, not kept, read by exactly one node, a `Relu` or `Clip` of the same program. Its
/// gradient reads `x` and the saved statistics, not `y`, and the activation's gradient reads its
/// output or that output's mask, which the fused node writes, so nothing the gradients read goes.
/// The fused node takes the BatchNorm's place (its statistics outputs keep their writer's
/// position; the activation's readers all come later). Returns how many nodes it fused.
pub fn fuse_norm_act(graph: &mut Graph, kept: &[TensorId]) -> usize {
    let readers = readers(graph);
    let mut removed = vec![false; graph.nodes.len()];
    let mut fused = 0;
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        let Op::Norm(NormOp::BatchNormTrain(norm)) = node.op else { continue };
        let y = node.outputs[0];
        let [k] = readers[y.index()][..] else { continue };
        if graph.tensor(y).role != Role::Transient || kept.contains(&y) || removed[k] {
            continue;
        }
        let act_node = &graph.nodes[k];
        let act = match act_node.op {
            Op::Dense(DenseOp::Relu) => Activation::Relu,
            Op::Dense(DenseOp::Clip(c)) => Activation::Clip(c),
            _ => continue,
        };
        if act_node.program != node.program || act_node.phase != node.phase {
            continue;
        }
        let mut outputs = node.outputs.clone();
        outputs[0] = act_node.outputs[0];
        graph.nodes[i] = Node { op: NormOp::BatchNormTrainAct { norm, act }.into(), outputs, ..node.clone() };
        removed[k] = true;
        fused += 1;
    }
    drop_removed(graph, &removed);
    fused
}

/// The activation's backward folded into the gradient op before it: a `MaskGrad` whose `dy` is a
/// `Conv2dGradInput` output read by nothing else becomes one `Conv2dGradInputMasked` node, so
/// the unmasked input gradient and the masked one (a 12 MiB map each in MobileNetV2's second
/// block at batch 8) are not both alive. `MaskGrad` keeps `dy` where the bit is set and writes 0
/// elsewhere, which the fused op does in place on its own result: the same bits.
pub fn fuse_grad_input_mask(graph: &mut Graph, kept: &[TensorId]) -> usize {
    let mut readers = vec![0usize; graph.tensors.len()];
    let mut producer: Vec<Option<usize>> = vec![None; graph.tensors.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            readers[t.index()] += 1;
        }
        for t in &node.outputs {
            producer[t.index()] = Some(i);
        }
    }
    let mut removed = vec![false; graph.nodes.len()];
    let mut fused = 0;
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if !matches!(node.op, Op::Mask(MaskOp::Grad)) || node.program != Program::Train {
            continue;
        }
        let (dy, bits) = (node.inputs[0], node.inputs[1]);
        let Some(j) = producer[dy.index()] else { continue };
        let grad_input = &graph.nodes[j];
        let Op::Conv(ConvOp::Conv2dGradInput { conv, input_hw }) = grad_input.op else { continue };
        if readers[dy.index()] != 1 || graph.tensor(dy).role != Role::Transient || kept.contains(&dy) || grad_input.program != node.program
        {
            continue;
        }
        let fused_node = Node {
            name: grad_input.name.clone(),
            op: ConvOp::Conv2dGradInputMasked { conv, input_hw }.into(),
            inputs: vec![grad_input.inputs[0], grad_input.inputs[1], bits],
            outputs: node.outputs.clone(),
            phase: node.phase,
            program: node.program,
        };
        // At the MaskGrad's place: the bits come from the forward pass, the conv's inputs were
        // written before the conv gradient ran, and every reader of dx follows.
        graph.nodes[i] = fused_node;
        removed[j] = true;
        fused += 1;
    }
    drop_removed(graph, &removed);
    fused
}

/// Fuses every eligible conv + bias (+ activation) chain (see the module documentation) and
/// returns how many fused nodes the graph now holds. `kept` are tensors the programs fetch or feed.
pub fn fuse_conv_bias_act(graph: &mut Graph, kept: &[TensorId]) -> usize {
    let readers = readers(graph);
    // The single reader of `t`, when `t` is a transient intermediate that may disappear.
    let only_reader = |graph: &Graph, t: TensorId| -> Option<usize> {
        let def = graph.tensor(t);
        match readers[t.index()][..] {
            [r] if def.role == Role::Transient && !kept.contains(&t) => Some(r),
            _ => None,
        }
    };
    let mut removed = vec![false; graph.nodes.len()];
    let mut fused = 0;
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        // The producer: a convolution, or a matmul (a Linear layer; its bias is per column).
        let fused_op = |act: Activation| -> Option<Op> {
            match node.op {
                Op::Conv(ConvOp::Conv2d(conv)) => Some(ConvOp::Conv2dBiasAct { conv, act }.into()),
                Op::Dense(DenseOp::MatMul(mm)) => Some(DenseOp::MatMulBiasAct { mm, act }.into()),
                _ => None,
            }
        };
        if fused_op(Activation::Identity).is_none() || node.phase != Phase::Forward || removed[i] {
            continue;
        }
        let Some(j) = only_reader(graph, node.outputs[0]) else { continue };
        let bias_node = &graph.nodes[j];
        if !matches!(bias_node.op, Op::Dense(DenseOp::BiasAdd))
            || bias_node.program != node.program
            || bias_node.inputs[0] != node.outputs[0]
        {
            continue;
        }
        let (bias, biased) = (bias_node.inputs[1], bias_node.outputs[0]);
        let activation = only_reader(graph, biased).and_then(|k| {
            let act_node = &graph.nodes[k];
            let act = match act_node.op {
                Op::Dense(DenseOp::Relu) => Activation::Relu,
                Op::Dense(DenseOp::Clip(c)) => Activation::Clip(c),
                _ => return None,
            };
            (act_node.program == node.program).then_some((k, act, act_node.outputs[0]))
        });
        let (last, act, y) = activation.unwrap_or((j, Activation::Identity, biased));
        let fused_node = Node {
            name: node.name.clone(),
            op: fused_op(act).expect("a convolution or a matmul"),
            inputs: vec![node.inputs[0], node.inputs[1], bias],
            outputs: vec![y],
            phase: Phase::Forward,
            program: node.program,
        };
        // The fused node takes the place of the chain's last node: every reader of `y` follows it,
        // and its inputs were all written before the convolution ran.
        graph.nodes[last] = fused_node;
        removed[i] = true;
        if last != j {
            removed[j] = true;
        }
        fused += 1;
    }
    drop_removed(graph, &removed);
    fused
}

/// The nodes that read each tensor (indexed as `graph.tensors`), in graph order.
fn readers(graph: &Graph) -> Vec<Vec<usize>> {
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); graph.tensors.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for t in &node.inputs {
            readers[t.index()].push(i);
        }
    }
    readers
}

/// Drops the nodes marked in `removed` (indexed as `graph.nodes`), keeping the others' order.
fn drop_removed(graph: &mut Graph, removed: &[bool]) {
    let mut index = 0;
    graph.nodes.retain(|_| {
        index += 1;
        !removed[index - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Program};
    use pock_engine::ops::{Clip, Conv2d};

    fn conv() -> Op {
        ConvOp::Conv2d(Conv2d { stride: [1, 1], padding: [1; 4], dilation: [1, 1], groups: 1 }).into()
    }

    /// x -> conv -> bias -> relu6 -> conv -> bias (-> output), and a third conv whose biased output
    /// is read twice.
    fn graph() -> (Graph, TensorId) {
        let mut g = Graph::new();
        let x = g.input("x", vec![1, 2, 4, 4], DType::F32, Role::Input);
        let w = g.parameter("w", vec![2, 2, 3, 3], vec![0.1; 36]);
        let b = g.parameter("b", vec![2], vec![0.5; 2]);
        let fwd =
            |g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]| g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0];
        let t = fwd(&mut g, "c1", conv(), &[x, w]);
        let t = fwd(&mut g, "c1.bias", DenseOp::BiasAdd.into(), &[t, b]);
        let t = fwd(&mut g, "c1.act", DenseOp::Clip(Clip { min: 0.0, max: 6.0 }).into(), &[t]);
        let t = fwd(&mut g, "c2", conv(), &[t, w]);
        let t2 = fwd(&mut g, "c2.bias", DenseOp::BiasAdd.into(), &[t, b]);
        let t = fwd(&mut g, "c3", conv(), &[t2, w]);
        let t = fwd(&mut g, "c3.bias", DenseOp::BiasAdd.into(), &[t, b]);
        let r = fwd(&mut g, "c3.act", DenseOp::Relu.into(), &[t]);
        fwd(&mut g, "sum", DenseOp::Add.into(), &[r, t]);
        (g, t2)
    }

    #[test]
    fn chains_become_one_node_each() {
        let (mut g, _) = graph();
        assert_eq!(fuse_conv_bias_act(&mut g, &[]), 3);
        g.validate().unwrap();
        let ops: Vec<(&str, String)> = g.nodes.iter().map(|n| (n.name.as_str(), format!("{:?}", n.op))).collect();
        assert_eq!(ops.len(), 5, "{ops:?}");
        let act = |n: &Node| match &n.op {
            Op::Conv(ConvOp::Conv2dBiasAct { act, .. }) => Some(*act),
            _ => None,
        };
        assert_eq!(act(&g.nodes[0]), Some(Activation::Clip(Clip { min: 0.0, max: 6.0 })));
        assert_eq!(act(&g.nodes[1]), Some(Activation::Identity));
        // c3's biased output is read by the ReLU and by the sum: the ReLU stays a node of its own.
        assert_eq!(act(&g.nodes[2]), Some(Activation::Identity));
        assert_eq!(g.nodes[3].op, Op::Dense(DenseOp::Relu));
        assert_eq!(g.nodes[0].name, "c1");
        // The fused nodes write the chains' last tensors.
        assert_eq!(g.tensor(g.nodes[0].outputs[0]).name, "c1.act");
    }

    #[test]
    fn a_mask_gradient_of_a_conv_input_gradient_joins_it() {
        use pock_engine::ops::{packed_shape, MaskKind};
        let mut g = Graph::new();
        let dy = g.input("dy", vec![1, 2, 4, 4], DType::F32, Role::Input);
        let w = g.parameter("w", vec![2, 2, 3, 3], vec![0.1; 36]);
        let v = g.input("v", vec![1, 2, 4, 4], DType::F32, Role::Input);
        let bits = g.emit("pack", MaskOp::Pack(MaskKind::Relu), &[v], Phase::Forward, Program::Train).unwrap()[0];
        assert_eq!(g.shape(bits), packed_shape(32));
        let conv = Conv2d { stride: [1, 1], padding: [1; 4], dilation: [1, 1], groups: 1 };
        let bwd =
            |g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]| g.emit(name, op, inputs, Phase::Backward, Program::Train).unwrap()[0];
        let d = bwd(&mut g, "c.grad.dx", ConvOp::Conv2dGradInput { conv, input_hw: [4, 4] }.into(), &[dy, w]);
        let dx = bwd(&mut g, "act.grad.dx", MaskOp::Grad.into(), &[d, bits]);
        // A second MaskGrad whose dy is read twice stays as it is.
        let d2 = bwd(&mut g, "c2.grad.dx", ConvOp::Conv2dGradInput { conv, input_hw: [4, 4] }.into(), &[dx, w]);
        bwd(&mut g, "act2.grad.dx", MaskOp::Grad.into(), &[d2, bits]);
        bwd(&mut g, "other", DenseOp::Relu.into(), &[d2]);
        assert_eq!(fuse_grad_input_mask(&mut g, &[]), 1);
        g.validate().unwrap();
        let names: Vec<(&str, &str)> = g.nodes.iter().map(|n| (n.name.as_str(), n.op.name())).collect();
        assert_eq!(
            names,
            [
                ("pack", "MaskPack"),
                ("c.grad.dx", "Conv2dGradInputMasked"),
                ("c2.grad.dx", "Conv2dGradInput"),
                ("act2.grad.dx", "MaskGrad"),
                ("other", "Relu")
            ]
        );
        assert_eq!(g.nodes[1].outputs, [dx]);
    }

    #[test]
    fn a_linear_layer_becomes_one_node() {
        use pock_engine::ops::MatMul;
        let mut g = Graph::new();
        let x = g.input("x", vec![2, 3], DType::F32, Role::Input);
        let w = g.parameter("w", vec![4, 3], vec![0.1; 12]);
        let b = g.parameter("b", vec![4], vec![0.5; 4]);
        let fwd =
            |g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]| g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0];
        let mm = MatMul { trans_a: false, trans_b: true };
        let t = fwd(&mut g, "fc", DenseOp::MatMul(mm).into(), &[x, w]);
        let t = fwd(&mut g, "fc.bias", DenseOp::BiasAdd.into(), &[t, b]);
        let y = fwd(&mut g, "relu", DenseOp::Relu.into(), &[t]);
        assert_eq!(fuse_conv_bias_act(&mut g, &[]), 1);
        g.validate().unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].op, Op::Dense(DenseOp::MatMulBiasAct { mm, act: Activation::Relu }));
        assert_eq!((g.nodes[0].inputs.clone(), g.nodes[0].outputs.clone()), (vec![x, w, b], vec![y]));
    }

    /// `x -> BatchNorm -> op` where `op` is the one reader of the normalised output, and a second
    /// BatchNorm whose output is also read by an Add (it stays as it is).
    #[test]
    fn a_batch_norm_and_its_activation_become_one_node() {
        use crate::ir::{TensorDef, Values};
        use pock_engine::ops::{BatchNorm, Clip};
        let norm = BatchNorm { eps: 1e-5, momentum: 0.1 };
        for act in [Activation::Relu, Activation::Clip(Clip { min: 0.0, max: 6.0 })] {
            let mut g = Graph::new();
            let x = g.input("x", vec![2, 3, 4, 4], DType::F32, Role::Input);
            let gamma = g.parameter("gamma", vec![3], vec![1.0; 3]);
            let beta = g.parameter("beta", vec![3], vec![0.0; 3]);
            let stat = |g: &mut Graph, name: &str| {
                let def = TensorDef { name: name.into(), shape: vec![3], dtype: DType::F32, role: Role::RunningStat, init: None };
                g.add_tensor(TensorDef { init: Some(Values::F32(vec![0.0; 3])), ..def })
            };
            let stats = [stat(&mut g, "m1"), stat(&mut g, "v1"), stat(&mut g, "m2"), stat(&mut g, "v2")];
            let bn = |g: &mut Graph, name: &str, x: TensorId, running: &[TensorId]| {
                g.emit_inplace(name, NormOp::BatchNormTrain(norm), &[x, gamma, beta], running, Phase::Forward, Program::Train).unwrap()
            };
            let outs = bn(&mut g, "bn1", x, &stats[..2]);
            let act_op: Op = match act {
                Activation::Clip(c) => DenseOp::Clip(c).into(),
                _ => DenseOp::Relu.into(),
            };
            let v = g.emit("act1", act_op.clone(), &[outs[0]], Phase::Forward, Program::Train).unwrap()[0];
            let outs2 = bn(&mut g, "bn2", v, &stats[2..]);
            let v2 = g.emit("act2", act_op, &[outs2[0]], Phase::Forward, Program::Train).unwrap()[0];
            g.emit("sum", DenseOp::Add, &[v2, outs2[0]], Phase::Forward, Program::Train).unwrap();
            assert_eq!(fuse_norm_act(&mut g, &[]), 1);
            g.validate().unwrap();
            let names: Vec<(&str, &str)> = g.nodes.iter().map(|n| (n.name.as_str(), n.op.name())).collect();
            assert_eq!(
                names,
                [("bn1", "BatchNormTrainAct"), ("bn2", "BatchNormTrain"), ("act2", act_op_name(act)), ("sum", "AddSameShape")]
            );
            assert_eq!(g.nodes[0].op, Op::Norm(NormOp::BatchNormTrainAct { norm, act }));
            // The fused node writes the activation's output and the BatchNorm's statistics.
            let mut want = outs.clone();
            want[0] = v;
            assert_eq!(g.nodes[0].outputs, want);
            // A kept normalised output is left alone.
            let mut g2 = Graph::new();
            let x = g2.input("x", vec![2, 3], DType::F32, Role::Input);
            let gamma2 = g2.parameter("gamma", vec![3], vec![1.0; 3]);
            let beta2 = g2.parameter("beta", vec![3], vec![0.0; 3]);
            let running = [stat(&mut g2, "m"), stat(&mut g2, "v")];
            let y = g2
                .emit_inplace("bn", NormOp::BatchNormTrain(norm), &[x, gamma2, beta2], &running, Phase::Forward, Program::Train)
                .unwrap()[0];
            g2.emit("relu", DenseOp::Relu, &[y], Phase::Forward, Program::Train).unwrap();
            assert_eq!(fuse_norm_act(&mut g2, &[y]), 0);
        }
    }

    fn act_op_name(act: Activation) -> &'static str {
        if act == Activation::Relu {
            "Relu"
        } else {
            "Clip"
        }
    }

    #[test]
    fn a_kept_intermediate_stays() {
        let (mut g, t2) = graph();
        // c2's biased output is fetched: c2 may still fuse its bias (it writes t2), and c3 too.
        assert_eq!(fuse_conv_bias_act(&mut g, &[t2]), 3);
        let conv_out = g.find("c1").unwrap();
        // c1's raw output is kept: its chain is left alone.
        let (mut g, _) = graph();
        assert_eq!(fuse_conv_bias_act(&mut g, &[conv_out]), 2);
        assert!(g.nodes.iter().any(|n| n.name == "c1" && matches!(n.op, Op::Conv(ConvOp::Conv2d(_)))));
    }
}
