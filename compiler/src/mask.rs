//! The mask pass: ReLU and ReLU6 (Clip) gradients keep a 1-bit mask instead of a float tensor.
//!
//! `ReluGrad` and `ClipGrad` read the activation's output only to ask, per element, whether the
//! gradient passes. Where nothing else in the backward pass reads that output, keeping it as f32
//! until its gradient runs costs 32 bits per element for one bit of information. This pass, run
//! after autodiff has pruned the backward graph, rewrites such a gradient node:
//!
//! ```text
//! forward:  v = Relu(x)          forward:  v = Relu(x); bits = MaskPack(Relu)(v)
//! backward: dx = ReluGrad(dy, v)  ==>   backward: dx = MaskGrad(dy, bits)
//! ```
//!
//! The pack node runs right after the node that writes `v`, so `v` dies at its last forward reader
//! and only `bits` (`[ceil(n / 8)]` bytes) lives into the backward pass. `MaskGrad(dy,
//! MaskPack(v))` computes the very predicate the float op computes (`v > 0`; `min < v < max`), so
//! gradients are bit-identical with and without the pass.
//!
//! The rule: a `ReluGrad`/`ClipGrad` node of the Train program is rewritten when the forward value
//! it reads is a transient written by a Train forward node and no other node outside the forward
//! phase (another gradient rule, an optimizer op) reads it, directly or through a `Reshape` (which
//! shares its buffer). Where another rule reads it (the next layer's weight gradient in a full
//! update, a max pool's gradient), the float is kept anyway and a mask would only add memory, so
//! the node is left as it is.

use std::collections::HashMap;

use pock_engine::ops::{packed_shape, DenseOp, MaskKind, MaskOp, Op};

use crate::ir::{DType, Graph, Node, Phase, Program, Role, TensorDef, TensorId};

/// Rewrites every eligible ReLU/ReLU6 gradient of the Train program to read a packed mask (see the
/// module documentation). Returns how many gradient nodes now read a mask.
pub fn pack_activation_masks(graph: &mut Graph) -> usize {
    let train = |n: &Node| n.program == Program::Train;
    // Reshape outputs share their input's buffer: a read of one keeps the other alive.
    let mut root: Vec<TensorId> = (0..graph.tensors.len() as u32).map(TensorId).collect();
    for node in graph.nodes.iter().filter(|n| train(n)) {
        if let Op::Dense(DenseOp::Reshape { .. }) = node.op {
            root[node.outputs[0].index()] = root[node.inputs[0].index()];
        }
    }
    let mut late_readers = vec![0usize; graph.tensors.len()];
    for node in graph.nodes.iter().filter(|n| train(n) && n.phase != Phase::Forward) {
        for t in &node.inputs {
            late_readers[root[t.index()].index()] += 1;
        }
    }
    let mut producer: HashMap<TensorId, usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate().filter(|(_, n)| train(n) && n.phase == Phase::Forward) {
        for &t in &node.outputs {
            producer.insert(t, i);
        }
    }

    // (index of the node that writes the activation, the pack node to run right after it)
    let mut packs: Vec<(usize, Node)> = Vec::new();
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if !train(node) || node.phase != Phase::Backward {
            continue;
        }
        let kind = match node.op {
            Op::Dense(DenseOp::ReluGrad) => MaskKind::Relu,
            Op::Dense(DenseOp::ClipGrad(c)) => MaskKind::Clip(c),
            _ => continue,
        };
        let (dy, v) = (node.inputs[0], node.inputs[1]);
        let def = graph.tensor(v);
        let Some(&at) = producer.get(&v) else { continue };
        if def.role != Role::Transient || def.dtype != DType::F32 || late_readers[root[v.index()].index()] != 1 {
            continue;
        }
        let name = format!("{}.mask", def.name);
        let bits = graph.add_tensor(TensorDef {
            name: name.clone(),
            shape: packed_shape(def.numel()),
            dtype: DType::U8,
            role: Role::Transient,
            init: None,
        });
        packs.push((
            at,
            Node {
                name,
                op: MaskOp::Pack(kind).into(),
                inputs: vec![v],
                outputs: vec![bits],
                phase: Phase::Forward,
                program: Program::Train,
            },
        ));
        let node = &mut graph.nodes[i];
        node.op = MaskOp::Grad.into();
        node.inputs = vec![dy, bits];
    }

    let rewritten = packs.len();
    if rewritten > 0 {
        packs.sort_by_key(|(at, _)| *at);
        let mut packs = packs.into_iter().peekable();
        let old = std::mem::take(&mut graph.nodes);
        for (i, node) in old.into_iter().enumerate() {
            graph.nodes.push(node);
            while let Some((_, pack)) = packs.next_if(|(at, _)| *at == i) {
                graph.nodes.push(pack);
            }
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use pock_engine::ops::{Clip, MatMul};

    /// x -> MatMul(w1) -> Relu -> MatMul(w2) -> Clip -> (loss stand-in): the backward nodes are
    /// written by hand as autodiff would.
    fn graph(w2_trainable: bool) -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", vec![2, 3], DType::F32, Role::Input);
        let w1 = g.parameter("w1", vec![3, 5], vec![0.1; 15]);
        let w2 = g.parameter("w2", vec![5, 4], vec![0.2; 20]);
        if !w2_trainable {
            g.tensor_mut(w2).role = Role::Parameter { trainable: false };
        }
        let fwd =
            |g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]| g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0];
        let bwd =
            |g: &mut Graph, name: &str, op: Op, inputs: &[TensorId]| g.emit(name, op, inputs, Phase::Backward, Program::Train).unwrap()[0];
        let mm = |trans_a, trans_b| Op::from(DenseOp::MatMul(MatMul { trans_a, trans_b }));
        let h = fwd(&mut g, "fc1", mm(false, false), &[x, w1]);
        let r = fwd(&mut g, "relu", DenseOp::Relu.into(), &[h]);
        let o = fwd(&mut g, "fc2", mm(false, false), &[r, w2]);
        let clip = Clip { min: 0.0, max: 6.0 };
        let y = fwd(&mut g, "relu6", DenseOp::Clip(clip).into(), &[o]);
        let dy = g.constant("dy", vec![2, 4], vec![1.0; 8]);
        let d_o = bwd(&mut g, "relu6.grad.dx", DenseOp::ClipGrad(clip).into(), &[dy, y]);
        if w2_trainable {
            bwd(&mut g, "fc2.grad.db", mm(true, false), &[r, d_o]);
        }
        let d_r = bwd(&mut g, "fc2.grad.da", mm(false, true), &[d_o, w2]);
        let d_h = bwd(&mut g, "relu.grad.dx", DenseOp::ReluGrad.into(), &[d_r, r]);
        bwd(&mut g, "fc1.grad.db", mm(true, false), &[x, d_h]);
        g
    }

    fn ops(g: &Graph) -> Vec<(String, &'static str)> {
        g.nodes.iter().map(|n| (n.name.clone(), n.op.name())).collect()
    }

    #[test]
    fn a_gradient_that_alone_reads_the_activation_reads_a_mask() {
        let mut g = graph(false);
        assert_eq!(pack_activation_masks(&mut g), 2);
        g.validate().unwrap();
        let ops = ops(&g);
        let names: Vec<(&str, &str)> = ops.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        let expected = [
            ("fc1", "MatMul"),
            ("relu", "Relu"),
            ("relu.mask", "MaskPack"),
            ("fc2", "MatMul"),
            ("relu6", "Clip"),
            ("relu6.mask", "MaskPack"),
            ("relu6.grad.dx", "MaskGrad"),
            ("fc2.grad.da", "MatMul"),
            ("relu.grad.dx", "MaskGrad"),
            ("fc1.grad.db", "MatMul"),
        ];
        assert_eq!(names, expected);
        let bits = g.find("relu.mask").unwrap();
        assert_eq!(g.tensor(bits).shape, [2]); // 10 elements in 2 bytes
        assert_eq!(g.tensor(bits).dtype, DType::U8);
        // No backward node reads a float activation any more.
        let r = g.find("relu").unwrap();
        assert!(g.nodes.iter().filter(|n| n.phase == Phase::Backward).all(|n| !n.inputs.contains(&r)));
    }

    #[test]
    fn an_activation_another_rule_keeps_is_read_as_it_was() {
        let mut g = graph(true);
        // fc2's weight gradient reads the ReLU output, so only the ReLU6 gradient changes.
        assert_eq!(pack_activation_masks(&mut g), 1);
        g.validate().unwrap();
        let op_of = |name: &str| g.nodes.iter().find(|n| n.name == name).unwrap().op.name();
        assert_eq!(op_of("relu.grad.dx"), "ReluGrad");
        assert_eq!(op_of("relu6.grad.dx"), "MaskGrad");
        assert!(g.nodes.iter().all(|n| n.name != "relu.mask"));
    }

    #[test]
    fn a_read_through_a_reshape_keeps_the_float() {
        let mut g = Graph::new();
        let x = g.input("x", vec![2, 4], DType::F32, Role::Input);
        let r = g.emit("relu", DenseOp::Relu, &[x], Phase::Forward, Program::Train).unwrap()[0];
        let flat = g.emit("flat", DenseOp::Reshape { shape: vec![8] }, &[r], Phase::Forward, Program::Train).unwrap()[0];
        let dy = g.constant("dy", vec![2, 4], vec![1.0; 8]);
        g.emit("relu.grad.dx", DenseOp::ReluGrad, &[dy, r], Phase::Backward, Program::Train).unwrap();
        g.emit("other", DenseOp::Reshape { shape: vec![2, 4] }, &[flat], Phase::Backward, Program::Train).unwrap();
        assert_eq!(pack_activation_masks(&mut g), 0);
    }
}
