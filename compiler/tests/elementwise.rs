//! The broadcasting and unary families end to end: a model whose bias adds broadcast, whose
//! activation is an erf GELU written from primitives and selected per element by a comparison
//! and `Where`, is differentiated (whole-model finite-difference check), planned and trained by
//! the engine, which matches the f32 interpreter bit for bit.

use pock_compiler::gradcheck::{assert_close, check_model};
use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{DType, Graph, Phase, Program, Role, RuntimeScalar, TensorId};
use pock_compiler::{CompileOptions, ForwardGraph, Task, TrainingGraph};
use pock_engine::kernels::unary::{Erf, LeakyRelu};
use pock_engine::ops::{BroadcastOp, DenseOp, MatMul, UnaryFn, UnaryOp};
use pock_engine::{Session, SessionOptions, Targets};

mod support;
use support::emit;

const BATCH: usize = 8;
const FEATURES: usize = 6;
const HIDDEN: usize = 5;
const CLASSES: usize = 3;

/// `x @ W^T + b`, the bias added by broadcasting `[N]` over `[B, N]`.
fn linear(g: &mut Graph, name: &str, x: TensorId, inputs: usize, outputs: usize) -> TensorId {
    let w = g.parameter(
        format!("{name}.weight"),
        vec![outputs, inputs],
        (0..inputs * outputs).map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 0.8).collect(),
    );
    let b = g.parameter(format!("{name}.bias"), vec![outputs], (0..outputs).map(|i| i as f32 * 0.05 - 0.1).collect());
    let y = emit(g, name, DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[x, w]);
    emit(g, &format!("{name}.bias_add"), BroadcastOp::Add, &[y, b])
}

/// `gelu(h) = h * (0.5 + 0.5 erf(h / sqrt 2))` where `h > 0`, else `leaky_relu(h)`, with a
/// per-unit scale `[HIDDEN]` (a trainable parameter) and the divisor a scalar constant.
fn model() -> ForwardGraph {
    let mut g = Graph::new();
    let input = g.input("input", vec![BATCH, FEATURES], DType::F32, Role::Input);
    let h = linear(&mut g, "fc1", input, FEATURES, HIDDEN);
    let sqrt2 = g.constant("sqrt2", vec![], vec![std::f32::consts::SQRT_2]);
    let half = g.constant("half", vec![], vec![0.5]);
    let zero = g.constant("zero", vec![], vec![0.0]);
    let scaled = emit(&mut g, "gelu.div", BroadcastOp::Div, &[h, sqrt2]);
    let erf = emit(&mut g, "gelu.erf", UnaryOp::Map(UnaryFn::Erf(Erf)), &[scaled]);
    let halved = emit(&mut g, "gelu.halve", BroadcastOp::Mul, &[erf, half]);
    let gate = emit(&mut g, "gelu.gate", BroadcastOp::Add, &[halved, half]);
    let gelu = emit(&mut g, "gelu", BroadcastOp::Mul, &[h, gate]);
    let leaky = emit(&mut g, "leaky", UnaryOp::Map(UnaryFn::LeakyRelu(LeakyRelu { alpha: 0.1 })), &[h]);
    let positive = emit(&mut g, "positive", BroadcastOp::Greater, &[h, zero]);
    let act = emit(&mut g, "act", BroadcastOp::Where, &[positive, gelu, leaky]);
    let scale = g.parameter("scale", vec![HIDDEN], (0..HIDDEN).map(|i| 1.0 + i as f32 * 0.1).collect());
    let act = emit(&mut g, "scaled", BroadcastOp::Mul, &[act, scale]);
    let output = linear(&mut g, "fc2", act, HIDDEN, CLASSES);
    ForwardGraph { name: "broadcast-mlp".into(), graph: g, inputs: vec![input], output, task: Task::Classification { classes: CLASSES } }
}

fn options() -> CompileOptions {
    CompileOptions { learning_rate: 0.2, ..CompileOptions::default() }
}

fn data() -> (Vec<f32>, Vec<i64>) {
    let x = (0..BATCH * FEATURES).map(|i| (((i * 31) % 23) as f32 / 23.0 - 0.5) * 2.0).collect();
    let y = (0..BATCH).map(|i| ((i * 2) % CLASSES) as i64).collect();
    (x, y)
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let checks = check_model(model(), 3, 8, 16, 1e-6).unwrap();
    assert!(checks.iter().any(|c| c.name == "fc1.bias") && checks.iter().any(|c| c.name == "scale"), "{checks:?}");
    assert_close("broadcast MLP", &checks, 1e-6);
}

#[test]
fn bias_gradients_are_summed_back_to_the_bias_shape() {
    let t: TrainingGraph = model().into_training(options()).unwrap();
    let sums: Vec<_> = t.graph.nodes.iter().filter(|n| matches!(n.op, pock_engine::Op::Broadcast(BroadcastOp::SumTo { .. }))).collect();
    for bias in ["fc1.bias", "fc2.bias", "scale"] {
        let shape = t.graph.shape(t.graph.find(bias).unwrap()).to_vec();
        assert!(sums.iter().any(|n| t.graph.shape(n.outputs[0]) == shape), "no SumTo to {bias}'s shape {shape:?}");
    }
    // The comparison's bool output is never differentiated: every backward value is a float, and
    // nothing is summed to a scalar (only the constants are scalars, and they need no gradient).
    for node in t.graph.nodes.iter().filter(|n| n.phase == Phase::Backward) {
        for &y in &node.outputs {
            assert_eq!(t.graph.tensor(y).dtype, DType::F32, "{} writes {}", node.name, t.graph.tensor(y).name);
        }
    }
    assert!(sums.iter().all(|n| !t.graph.shape(n.outputs[0]).is_empty()));
}

#[test]
fn engine_trains_it_and_matches_the_interpreter_bit_for_bit() {
    let t: TrainingGraph = model().into_training(options()).unwrap();
    let bytes = t.clone().into_plan().unwrap().to_bytes();
    let steps = 10;
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap();
    let losses: Vec<f32> = (0..steps)
        .map(|_| {
            let (x, y) = data();
            s.train_step(&x, Targets::Labels(&y)).unwrap()
        })
        .collect();
    let mut it = Interpreter::<f32>::new(&t.graph);
    let lr = t.graph.tensors.iter().position(|d| d.role == Role::RuntimeScalar(RuntimeScalar::LearningRate));
    for (step, &loss) in losses.iter().enumerate() {
        let (x, y) = data();
        it.set(t.train_input, x);
        it.set_int(t.train_target, y);
        if let Some(lr) = lr {
            it.set(TensorId(lr as u32), vec![options().learning_rate]);
        }
        it.run(t.graph.program_nodes(Program::Train)).unwrap();
        assert_eq!(it.get(t.train_loss).unwrap()[0].to_bits(), loss.to_bits(), "step {step}");
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "every step lowers the loss on this fixed batch: {losses:?}");
    // The CPU backend runs the new ops through the reference kernels (only matmul and conv have
    // fast kernels), so it agrees to rounding.
    let mut fast = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false, ..Default::default() }).unwrap();
    let (x, y) = data();
    let first = fast.train_step(&x, Targets::Labels(&y)).unwrap();
    assert!((first - losses[0]).abs() < 1e-5 * losses[0].abs().max(1.0), "{first} vs {}", losses[0]);
}

#[test]
fn a_plan_with_shapes_that_do_not_broadcast_is_refused() {
    let bytes = model().into_training(options()).unwrap().into_plan().unwrap().to_bytes();
    let (plan, weights) = pock_engine::decode_plan(&bytes).unwrap();
    let plan = plan.into_plan();
    let weights = &bytes[weights.offset..weights.offset + weights.len];
    // A smaller bias still fits its place in the file, so only the shape rule can catch it.
    let mut damaged = plan.clone();
    let t = damaged.find("scale").unwrap();
    damaged.tensors[t.index()].shape = vec![HIDDEN - 1];
    let e = pock_engine::decode_plan(&pock_engine::encode_plan(&damaged, weights)).unwrap_err();
    assert!(e.to_string().contains("shapes [8, 5] and [4] cannot be broadcast together"), "{e}");
    // A float value relabelled bool (smaller, so it still fits) is refused by the dtype rules.
    let mut damaged = plan;
    let t = damaged.find("gelu").unwrap();
    damaged.tensors[t.index()].dtype = DType::Bool;
    let e = pock_engine::decode_plan(&pock_engine::encode_plan(&damaged, weights)).unwrap_err();
    assert!(e.to_string().contains("is bool, expected float32"), "{e}");
}
