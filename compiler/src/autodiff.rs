//! Compile-time reverse-mode autodiff, pruned to what the trainable parameters need.
//!
//! Sparse backpropagation is a reachability question: a value needs a gradient only if it
//! depends on a trainable parameter, so only nodes on a path from a trainable parameter to the
//! loss get gradient rules applied, and each rule is told which inputs need a gradient so it emits
//! nothing else. A final dead-node sweep removes any backward node whose result nobody uses.

use std::collections::HashMap;

use pock_engine::ops::{CrossEntropy, DenseOp, LossOp, NormOp, Op, RandomOp, Reduction};

use crate::error::{CompileError, Result};
use crate::ir::{DType, Graph, Node, Phase, Program, Role, TensorDef, TensorId};
use crate::ops::{gradient, GradCtx};
use crate::stages::{BatchNormMode, CompileOptions, ForwardGraph, Task, TrainingGraph};

/// The gradients of a differentiated graph: `(trainable parameter, its gradient)` in parameter
/// order.
pub type ParamGrads = Vec<(TensorId, TensorId)>;

/// Builds every program of the plan from a model.
pub fn build_training(forward: ForwardGraph, options: CompileOptions) -> Result<TrainingGraph> {
    if options.accumulate == 0 {
        return Err(CompileError::Option("--accumulate must be at least 1".into()));
    }
    let ForwardGraph { name, mut graph, inputs, output, task } = forward;
    let batch = batch_of(&graph, &inputs)?;
    if graph.shape(output).first() != Some(&batch) {
        return Err(CompileError::Option(format!(
            "the model's output '{}' has shape {:?}, whose first axis is not the batch ({batch}, the first axis of input '{}'): \
             pock reads the first axis of every input, output and target as the batch. Export the model batch-first \
             (for example nn.LSTM(batch_first=True), or a Transpose of a sequence-first output), or choose another output with --output",
            graph.tensor(output).name,
            graph.shape(output),
            graph.tensor(inputs[0]).name
        )));
    }
    let mut folded_norms = Vec::new();
    if options.batch_norm == BatchNormMode::Fold {
        let kept: Vec<TensorId> = inputs.iter().copied().chain([output]).collect();
        folded_norms = crate::fold_norm::fold_batch_norms(&mut graph, &kept);
    }
    if matches!(options.batch_norm, BatchNormMode::Frozen | BatchNormMode::Fold) {
        freeze_batch_norm(&mut graph);
    }
    crate::scheme::apply(&mut graph, &options.update)?;
    // Int8 rewriting comes after the scheme, which decides which weights stay f32 master copies.
    let (graph, inputs, output) = match &options.quantize {
        Some(q) => {
            let forward =
                crate::quantize::quantize_int8(ForwardGraph { name: name.clone(), graph, inputs, output, task: task.clone() }, q)?;
            (forward.graph, forward.inputs, forward.output)
        }
        None => (graph, inputs, output),
    };
    let mut graph = graph;
    let forward_nodes = graph.nodes.len();

    // Eval program: a copy of the forward nodes with frozen statistics and its own activations.
    let (eval_inputs, eval_output) = clone_for_eval(&mut graph, forward_nodes, &inputs, output);

    // Losses.
    let out_shape = graph.shape(output).to_vec();
    let (target_shape, target_dtype) = match &task {
        Task::Classification { .. } => (vec![batch], DType::I64),
        Task::Regression => (out_shape.clone(), DType::F32),
        // The labels have the logits' shape without the class axis.
        Task::CrossEntropy { .. } => (out_shape[..out_shape.len().saturating_sub(1)].to_vec(), DType::I64),
    };
    let target_def =
        |name: &str| TensorDef { name: name.into(), shape: target_shape.clone(), dtype: target_dtype, role: Role::Target, init: None };
    let loss_op = |reduction: Reduction| -> Op {
        match &task {
            Task::Classification { .. } => LossOp::SoftmaxCrossEntropy(reduction).into(),
            Task::Regression => LossOp::Mse(reduction).into(),
            Task::CrossEntropy { ignore_index, .. } => LossOp::CrossEntropy(CrossEntropy { reduction, ignore_index: *ignore_index }).into(),
        }
    };
    match task {
        Task::Classification { classes } if out_shape != [batch, classes] => {
            return Err(CompileError::Option(format!(
                "a classifier's output must be [batch, classes] = [{batch}, {classes}], got {out_shape:?}"
            )));
        }
        Task::CrossEntropy { classes, .. } if out_shape.len() < 2 || out_shape[0] != batch || out_shape.last() != Some(&classes) => {
            return Err(CompileError::Option(format!(
                "cross-entropy needs [batch, ..., classes] = [{batch}, ..., {classes}] logits, got {out_shape:?}"
            )));
        }
        _ => {}
    }
    let train_target = graph.add_tensor(target_def("target"));
    let eval_target = graph.add_tensor(target_def("eval.target"));
    let train_loss = graph.emit("loss", loss_op(Reduction::Mean), &[output, train_target], Phase::Forward, Program::Train)?[0];
    let eval_loss = graph.emit("eval.loss", loss_op(Reduction::PerSample), &[eval_output, eval_target], Phase::Forward, Program::Eval)?[0];

    let grads = differentiate(&mut graph, train_loss)?;
    crate::optimizer::add_optimizer(&mut graph, &grads, &options)?;
    if options.activation_masks {
        crate::mask::pack_activation_masks(&mut graph);
    }
    if options.fuse {
        let kept: Vec<TensorId> =
            inputs.iter().copied().chain([output, train_target, train_loss, eval_output, eval_target, eval_loss]).collect();
        let kept: Vec<TensorId> = kept.into_iter().chain(eval_inputs.iter().copied()).collect();
        crate::fuse::fuse(&mut graph, &kept);
    }
    let train_feeds: Vec<TensorId> = inputs.iter().copied().chain([train_target]).collect();
    let train_scratch_unordered = crate::schedule::train_peak(&graph, &train_feeds, &[train_loss]);
    if options.reorder {
        crate::schedule::minimise_peak(&mut graph, &train_feeds, &[train_loss]);
    }
    graph.validate()?;
    Ok(TrainingGraph {
        name,
        graph,
        options,
        task,
        batch,
        train_input: inputs[0],
        train_inputs: inputs,
        train_target,
        train_loss,
        eval_input: eval_inputs[0],
        eval_inputs,
        eval_target,
        eval_output,
        eval_loss,
        param_grads: grads,
        folded_norms,
        train_scratch_unordered,
    })
}

/// The batch size: the leading axis every data input shares.
fn batch_of(graph: &Graph, inputs: &[TensorId]) -> Result<usize> {
    let Some(&first) = inputs.first() else {
        return Err(CompileError::Option("the model has no data input; a training plan needs at least one".into()));
    };
    let batch = graph.shape(first).first().copied().ok_or_else(|| {
        CompileError::Option(format!("the model input '{}' has no batch axis (it is a scalar)", graph.tensor(first).name))
    })?;
    for &t in inputs {
        if graph.shape(t).first() != Some(&batch) {
            return Err(CompileError::Option(format!(
                "the model input '{}' has shape {:?}, but '{}' sets the batch to {batch}: every data input needs that leading batch axis",
                graph.tensor(t).name,
                graph.shape(t),
                graph.tensor(first).name
            )));
        }
    }
    Ok(batch)
}

/// Emits the backward nodes of the Train program for the scalar `loss` and returns the gradient
/// of every trainable parameter that the loss depends on.
pub fn differentiate(graph: &mut Graph, loss: TensorId) -> Result<ParamGrads> {
    let trainable = graph.trainable_parameters();
    if trainable.is_empty() {
        return Err(CompileError::NothingTrainable { hint: String::new() });
    }
    let forward: Vec<Node> = graph.nodes.iter().filter(|n| n.program == Program::Train && n.phase == Phase::Forward).cloned().collect();

    // Which values depend on a trainable parameter.
    let mut requires = vec![false; graph.tensors.len()];
    for &p in &trainable {
        requires[p.index()] = true;
    }
    // Integer and bool values are never differentiated: they neither carry a dependency into a
    // node nor receive one from it. Int8 values are the exception: they stand for real values
    // (the quant family's activations), whose f32 gradients the quant ops' rules compute.
    let float = |graph: &Graph, t: &TensorId| matches!(graph.tensor(*t).dtype, DType::F32 | DType::I8);
    for node in &forward {
        let any = node.inputs.iter().any(|t| requires[t.index()] && float(graph, t));
        if any {
            let inplace = node.op.inplace_outputs();
            for (i, t) in node.outputs.iter().enumerate() {
                // In-place state (running statistics) is not differentiated.
                if !inplace.contains(&i) && float(graph, t) {
                    requires[t.index()] = true;
                }
            }
        }
    }
    if !requires[loss.index()] {
        return Err(CompileError::NothingTrainable { hint: " that the loss depends on".into() });
    }

    let seed = graph.constant("loss.grad_seed", vec![], vec![1.0]);
    let mut grads: HashMap<TensorId, TensorId> = HashMap::new();
    grads.insert(loss, seed);
    for node in forward.iter().rev() {
        let dy: Vec<Option<TensorId>> = node.outputs.iter().map(|t| grads.get(t).copied()).collect();
        if dy.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = node.inputs.iter().map(|t| requires[t.index()]).collect();
        if !needs.iter().any(|&b| b) {
            continue;
        }
        let input_grads = gradient(&mut GradCtx::new(graph, &node.name), node, &dy, &needs)?;
        for (pos, (&x, g)) in node.inputs.iter().zip(input_grads).enumerate() {
            let Some(g) = g else { continue };
            if !needs[pos] {
                continue;
            }
            let total = match grads.get(&x) {
                None => g,
                Some(&prev) => {
                    let name = format!("{}.grad.sum{}", graph.tensor(x).name, node.name);
                    graph.emit(name, DenseOp::Add, &[prev, g], Phase::Backward, Program::Train)?[0]
                }
            };
            grads.insert(x, total);
        }
    }
    let result: ParamGrads = trainable.into_iter().filter_map(|p| grads.get(&p).map(|&g| (p, g))).collect();
    let keep: Vec<TensorId> = result.iter().map(|&(_, g)| g).collect();
    prune_unused(graph, &keep);
    Ok(result)
}

/// Removes Train-program backward nodes whose outputs are neither read by any node nor in `keep`.
pub fn prune_unused(graph: &mut Graph, keep: &[TensorId]) {
    loop {
        let mut read = vec![false; graph.tensors.len()];
        for n in &graph.nodes {
            for t in &n.inputs {
                read[t.index()] = true;
            }
        }
        for t in keep {
            read[t.index()] = true;
        }
        let before = graph.nodes.len();
        graph.nodes.retain(|n| n.phase != Phase::Backward || n.outputs.iter().any(|t| read[t.index()]));
        if graph.nodes.len() == before {
            break;
        }
    }
}

/// Turns every training-mode BatchNorm into its frozen form (running statistics, not updated).
fn freeze_batch_norm(graph: &mut Graph) {
    for node in &mut graph.nodes {
        if let Op::Norm(NormOp::BatchNormTrain(bn)) = node.op {
            node.op = NormOp::BatchNormInfer(bn).into();
            // Inputs [x, gamma, beta] + the running statistics that were in-place outputs 3 and 4.
            node.inputs.extend_from_slice(&node.outputs[3..5]);
            node.outputs.truncate(1);
        }
    }
}

/// Appends the Eval program: the first `count` (forward) nodes again, with BatchNorm using
/// running statistics, dropout as the identity (and its step counter left alone), and fresh
/// activation tensors. Returns the eval inputs and output.
fn clone_for_eval(graph: &mut Graph, count: usize, inputs: &[TensorId], output: TensorId) -> (Vec<TensorId>, TensorId) {
    let mut map: HashMap<TensorId, TensorId> = HashMap::new();
    fn fresh(graph: &mut Graph, map: &mut HashMap<TensorId, TensorId>, t: TensorId) -> TensorId {
        if let Some(&m) = map.get(&t) {
            return m;
        }
        let def = graph.tensor(t).clone();
        if def.is_persistent() {
            return t;
        }
        let m = graph.add_tensor(TensorDef { name: format!("eval.{}", def.name), ..def });
        map.insert(t, m);
        m
    }
    let eval_inputs = inputs.iter().map(|&t| fresh(graph, &mut map, t)).collect();
    for i in 0..count {
        let node = graph.nodes[i].clone();
        let (op, inputs, outputs) = match node.op {
            Op::Norm(NormOp::BatchNormTrain(bn)) => {
                let mut inputs = node.inputs.clone();
                inputs.extend_from_slice(&node.outputs[3..5]);
                (NormOp::BatchNormInfer(bn).into(), inputs, node.outputs[..1].to_vec())
            }
            // Evaluation never drops: the output is the input (its mask has no reader here), and
            // evaluating must not move the training step counter.
            Op::Random(RandomOp::Dropout(_)) => {
                let x = fresh(graph, &mut map, node.inputs[0]);
                map.insert(node.outputs[0], x);
                continue;
            }
            Op::Random(RandomOp::Advance) => continue,
            op => (op, node.inputs.clone(), node.outputs.clone()),
        };
        let inputs = inputs.iter().map(|&t| fresh(graph, &mut map, t)).collect();
        let outputs = outputs.iter().map(|&t| fresh(graph, &mut map, t)).collect();
        graph.nodes.push(Node { name: format!("eval.{}", node.name), op, inputs, outputs, phase: Phase::Forward, program: Program::Eval });
    }
    let eval_output = fresh(graph, &mut map, output);
    (eval_inputs, eval_output)
}
