//! Optimizers as ops in the training graph, with their state as persistent tensors of the plan.
//!
//! Without accumulation the updates join the Train program and read each gradient directly. With
//! `accumulate = K > 1` the Train program adds each gradient into a persistent accumulator and a
//! separate Apply program, run by the host after every K-th micro-batch, scales (1/K, and global
//! norm clipping), updates and zeroes the accumulators. The learning rate and the step counter
//! are runtime scalars, so schedules need no recompilation.
//!
//! A non-finite gradient skips updates inside the plan, as PyTorch's `GradScaler` does. With a
//! `GradScale` (clipping or accumulation) its scale is NaN when the global norm is not finite,
//! every update of that step skips, and the `skipped_updates` counter grows by 1 once per skipped
//! step. Without it there is no point where all gradients exist at once (each update runs as soon
//! as its gradient is complete), so each update checks its own gradient: the skip is then per
//! parameter and the counter grows by 1 per skipped parameter update.

use pock_engine::ops::{Adam, GradScale, OptimOp, ParamRows, Sgd};
use pock_engine::plan::OptimizerKind;

use crate::error::{CompileError, Result};
use crate::ir::{DType, Graph, Phase, Program, Role, RuntimeScalar, TensorDef, TensorId};
use crate::stages::CompileOptions;

pub fn add_optimizer(graph: &mut Graph, grads: &[(TensorId, TensorId)], options: &CompileOptions) -> Result<()> {
    if let Some(c) = options.clip_grad_norm {
        if !(c > 0.0 && c.is_finite()) {
            return Err(CompileError::Option(format!("--clip-grad-norm must be a positive number, got {c}")));
        }
    }
    let scalar = |graph: &mut Graph, name: &str, which| {
        graph.add_tensor(TensorDef {
            name: name.into(),
            shape: vec![],
            dtype: DType::F32,
            role: Role::RuntimeScalar(which),
            init: Some(vec![0.0].into()),
        })
    };
    let lr = scalar(graph, "optimizer.lr", RuntimeScalar::LearningRate);
    let step = scalar(graph, "optimizer.step", RuntimeScalar::OptimizerStep);

    let k = options.accumulate;
    let (program, grads): (Program, Vec<(TensorId, TensorId)>) = if k > 1 {
        let mut accs = Vec::with_capacity(grads.len());
        for &(p, g) in grads {
            let pname = graph.tensor(p).name.clone();
            let acc = state(graph, format!("grad_accumulator.{pname}"), g, Role::GradAccumulator { param: p });
            graph.emit_inplace(format!("accumulate.{pname}"), OptimOp::AccumulateGrad, &[g], &[acc], Phase::Optimizer, Program::Train)?;
            accs.push((p, acc));
        }
        (Program::Apply, accs)
    } else {
        (Program::Train, grads.to_vec())
    };

    let skipped = graph.add_tensor(TensorDef {
        name: "optimizer.skipped_updates".into(),
        shape: vec![],
        dtype: DType::F32,
        role: Role::SkippedUpdates,
        init: Some(vec![0.0].into()),
    });
    let count = |graph: &mut Graph, name: String, of: TensorId| {
        graph.emit_inplace(name, OptimOp::CountNonFinite, &[of], &[skipped], Phase::Optimizer, program).map(drop)
    };
    let scale = if k > 1 || options.clip_grad_norm.is_some() {
        let all: Vec<TensorId> = grads.iter().map(|&(_, g)| g).collect();
        let op = OptimOp::GradScale(GradScale { max_norm: options.clip_grad_norm, multiplier: 1.0 / k as f32 });
        let scale = graph.emit("optimizer.grad_scale", op, &all, Phase::Optimizer, program)?[0];
        count(graph, "optimizer.count_skipped_step".into(), scale)?;
        Some(scale)
    } else {
        None
    };

    for &(p, g) in &grads {
        let pname = graph.tensor(p).name.clone();
        if scale.is_none() {
            count(graph, format!("count_skipped.{pname}"), g)?;
        }
        let mut inputs = vec![g, lr, step];
        inputs.extend(scale);
        let scaled = scale.is_some();
        let (op, states) = match options.optimizer {
            OptimizerKind::Sgd { momentum, dampening, nesterov, weight_decay } => {
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(CompileError::Option("Nesterov momentum requires a momentum > 0 and zero dampening".into()));
                }
                let states = if momentum != 0.0 {
                    vec![state(graph, format!("optimizer.{pname}.momentum_buffer"), g, slot(p, "momentum_buffer"))]
                } else {
                    vec![]
                };
                (OptimOp::SgdUpdate(Sgd { momentum, dampening, nesterov, weight_decay, scaled }), states)
            }
            OptimizerKind::Adam { beta1, beta2, eps, weight_decay } | OptimizerKind::AdamW { beta1, beta2, eps, weight_decay } => {
                let decoupled = matches!(options.optimizer, OptimizerKind::AdamW { .. });
                let m = state(graph, format!("optimizer.{pname}.exp_avg"), g, slot(p, "exp_avg"));
                let v = state(graph, format!("optimizer.{pname}.exp_avg_sq"), g, slot(p, "exp_avg_sq"));
                (OptimOp::AdamUpdate(Adam { beta1, beta2, eps, weight_decay, decoupled, scaled }), vec![m, v])
            }
        };
        // A partially trained parameter (scheme.rs) has a gradient of its trained rows only:
        // its update writes those rows, and its state covers them alone.
        let op = match graph.trained_rows.get(&p) {
            None => op,
            Some(r) => {
                let rows = ParamRows { start: r.start, param_rows: graph.shape(p)[0] };
                match op {
                    OptimOp::SgdUpdate(sgd) => OptimOp::SgdUpdateRows { sgd, rows },
                    OptimOp::AdamUpdate(adam) => OptimOp::AdamUpdateRows { adam, rows },
                    other => other,
                }
            }
        };
        let mut inplace = vec![p];
        inplace.extend(states);
        graph.emit_inplace(format!("update.{pname}"), op, &inputs, &inplace, Phase::Optimizer, program)?;
    }
    if k > 1 {
        for &(_, acc) in &grads {
            let name = format!("zero.{}", graph.tensor(acc).name);
            graph.emit_inplace(name, OptimOp::Fill { value: 0.0 }, &[], &[acc], Phase::Optimizer, Program::Apply)?;
        }
    }
    Ok(())
}

fn slot(param: TensorId, slot: &str) -> Role {
    Role::OptimizerState { param, slot: slot.into() }
}

/// A zero-initialised persistent tensor shaped like `grad` (the parameter's gradient: the whole
/// parameter, or the rows a partial-channel update trains).
fn state(graph: &mut Graph, name: String, grad: TensorId, role: Role) -> TensorId {
    let shape = graph.shape(grad).to_vec();
    let n = shape.iter().product();
    graph.add_tensor(TensorDef { name, shape, dtype: DType::F32, role, init: Some(vec![0.0; n].into()) })
}
