//! The `Cast` op end to end: a graph mixing float, `i64` and bool tensors is built, differentiated
//! (integer and bool values are never differentiated), planned, and run by the engine, which
//! builds typed kernel arguments from the plan.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{DType, Graph, Phase, Program, Role, TensorId};
use pock_compiler::{CompileError, CompileOptions, ForwardGraph, Task, TrainingGraph};
use pock_engine::ops::{CastOp, DenseOp, MatMul};
use pock_engine::{Session, SessionOptions, Targets};

mod support;
use support::{allocations_during, emit};

#[global_allocator]
static ALLOCATOR: support::Counting = support::Counting;

const BATCH: usize = 8;
const FEATURES: usize = 6;
const HIDDEN: usize = 5;
const CLASSES: usize = 4;

fn linear(g: &mut Graph, name: &str, x: TensorId, inputs: usize, outputs: usize) -> TensorId {
    let w = g.parameter(
        format!("{name}.weight"),
        vec![outputs, inputs],
        (0..inputs * outputs).map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 0.8).collect(),
    );
    let b = g.parameter(format!("{name}.bias"), vec![outputs], (0..outputs).map(|i| i as f32 * 0.05 - 0.1).collect());
    let y = emit(g, name, DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[x, w]);
    emit(g, &format!("{name}.bias_add"), DenseOp::BiasAdd, &[y, b])
}

/// A two-layer MLP whose activation is either ReLU or the same function written with casts:
/// `h * f32(i64(bool(relu(h))))`, which multiplies by a 0/1 mask that no gradient flows through.
fn mlp(mask_by_casts: bool) -> ForwardGraph {
    let mut g = Graph::new();
    let input = g.input("input", vec![BATCH, FEATURES], DType::F32, Role::Input);
    let h = linear(&mut g, "fc1", input, FEATURES, HIDDEN);
    let hidden = if mask_by_casts {
        let r = emit(&mut g, "relu", DenseOp::Relu, &[h]);
        let positive = emit(&mut g, "positive", CastOp::Cast { to: DType::Bool }, &[r]);
        let as_int = emit(&mut g, "as_int", CastOp::Cast { to: DType::I64 }, &[positive]);
        let mask = emit(&mut g, "mask", CastOp::Cast { to: DType::F32 }, &[as_int]);
        assert_eq!([g.tensor(positive).dtype, g.tensor(as_int).dtype, g.tensor(mask).dtype], [DType::Bool, DType::I64, DType::F32]);
        emit(&mut g, "masked", DenseOp::Mul, &[h, mask])
    } else {
        emit(&mut g, "relu", DenseOp::Relu, &[h])
    };
    let output = linear(&mut g, "fc2", hidden, HIDDEN, CLASSES);
    ForwardGraph { name: "cast-mlp".into(), graph: g, inputs: vec![input], output, task: Task::Classification { classes: CLASSES } }
}

fn training(forward: ForwardGraph) -> TrainingGraph {
    forward.into_training(options()).unwrap()
}

/// One fixed batch: training on it again and again must lower its loss.
fn data() -> (Vec<f32>, Vec<i64>) {
    let x = (0..BATCH * FEATURES).map(|i| (((i * 31) % 23) as f32 / 23.0 - 0.5) * 2.0).collect();
    let y = (0..BATCH).map(|i| ((i * 3) % CLASSES) as i64).collect();
    (x, y)
}

fn options() -> CompileOptions {
    CompileOptions { learning_rate: 0.2, ..CompileOptions::default() }
}

fn engine_losses(t: &TrainingGraph, steps: usize) -> Vec<f32> {
    let bytes = t.clone().into_plan().unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap();
    (0..steps)
        .map(|_| {
            let (x, y) = data();
            s.train_step(&x, Targets::Labels(&y)).unwrap()
        })
        .collect()
}

#[test]
fn casts_train_like_the_activation_they_spell() {
    let (cast, relu) = (training(mlp(true)), training(relu_free_check(mlp(false))));
    // No backward node reads the mask's integer or bool values or produces a gradient for them.
    for node in cast.graph.nodes.iter().filter(|n| n.phase == Phase::Backward) {
        for &t in node.inputs.iter().chain(&node.outputs) {
            let name = &cast.graph.tensor(t).name;
            assert!(!["positive", "as_int"].contains(&name.as_str()), "backward node '{}' touches '{name}'", node.name);
        }
    }
    // The engine (typed arguments from the plan) matches the f32 interpreter bit for bit...
    let steps = 10;
    let losses = engine_losses(&cast, steps);
    let mut it = Interpreter::<f32>::new(&cast.graph);
    let lr = cast.graph.tensors.iter().position(|d| d.role == Role::RuntimeScalar(pock_compiler::ir::RuntimeScalar::LearningRate));
    for (step, &loss) in losses.iter().enumerate() {
        let (x, y) = data();
        it.set(cast.train_input, x);
        it.set_int(cast.train_target, y);
        if let Some(lr) = lr {
            it.set(TensorId(lr as u32), vec![options().learning_rate]);
        }
        it.run(cast.graph.program_nodes(Program::Train)).unwrap();
        assert_eq!(it.get(cast.train_loss).unwrap()[0].to_bits(), loss.to_bits(), "step {step}");
    }
    // ...and the masked model trains exactly like the ReLU one: the mask's gradient path is the
    // identity where h > 0 and zero elsewhere, which is ReLU's gradient.
    assert_eq!(losses, engine_losses(&relu, steps));
    assert!(losses[steps - 1] < losses[0], "training lowers the loss: {losses:?}");
}

/// The reference model must not contain a cast (it is the comparison).
fn relu_free_check(f: ForwardGraph) -> ForwardGraph {
    assert!(f.graph.nodes.iter().all(|n| n.op.name() != "Cast"));
    f
}

#[test]
fn the_interpreter_and_engine_agree_on_the_integer_values() {
    // The eval program runs the casts too; its i64 intermediate holds 0 or 1 per hidden unit.
    let t = training(mlp(true));
    let as_int = t.graph.tensors.iter().position(|d| d.name == "eval.as_int").map(|i| TensorId(i as u32)).unwrap();
    let relu = t.graph.tensors.iter().position(|d| d.name == "eval.fc1.bias_add").map(|i| TensorId(i as u32)).unwrap();
    let mut it = Interpreter::<f32>::new(&t.graph);
    let (x, _) = data();
    it.set(t.eval_input, x);
    it.run(t.graph.program_nodes(Program::Eval).take_while(|n| n.name != "eval.masked")).unwrap();
    let h = it.get(relu).unwrap();
    let ints = it.get_int(as_int).unwrap();
    assert_eq!(ints.len(), BATCH * HIDDEN);
    assert!(ints.iter().zip(h).all(|(&i, &h)| i == i64::from(h > 0.0)), "{ints:?} vs {h:?}");
    assert!(ints.contains(&0) && ints.contains(&1), "the data exercises both sides of the mask: {ints:?}");
}

#[test]
fn a_loss_reached_only_through_an_integer_cast_has_nothing_to_train() {
    let mut f = mlp(false);
    let out = f.output;
    let ints = emit(&mut f.graph, "round", CastOp::Cast { to: DType::I64 }, &[out]);
    f.output = emit(&mut f.graph, "back", CastOp::Cast { to: DType::F32 }, &[ints]);
    let e = f.into_training(CompileOptions::default()).unwrap_err();
    assert!(matches!(e, CompileError::NothingTrainable { .. }), "{e}");
}

#[test]
fn float_to_float_cast_gradient_is_the_identity() {
    let checks = check_op(CastOp::Cast { to: DType::F32 }, &[CaseInput::Float(vec![3, 4])], 7).unwrap();
    assert_eq!(checks.len(), 1);
    assert_close("Cast f32 -> f32", &checks, 1e-9);
}

#[test]
fn a_plan_whose_cast_output_has_the_wrong_dtype_is_refused() {
    let bytes = training(mlp(true)).into_plan().unwrap().to_bytes();
    let (plan, weights) = pock_engine::decode_plan(&bytes).unwrap();
    let mut plan = plan.into_plan();
    let t = plan.find("as_int").unwrap();
    // A bool tensor is smaller than the i64 one, so it still fits its place: only the dtype rule
    // can catch it.
    plan.tensors[t.index()].dtype = DType::Bool;
    let damaged = pock_engine::encode_plan(&plan, &bytes[weights.offset..weights.offset + weights.len]);
    let e = pock_engine::decode_plan(&damaged).unwrap_err();
    assert!(e.to_string().contains("output 0 is bool, expected int64"), "{e}");
}

#[test]
fn typed_arguments_are_built_without_allocating() {
    let bytes = training(mlp(true)).into_plan().unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap();
    let (x, y) = data();
    let (mut out, mut losses) = (vec![0.0; BATCH * CLASSES], vec![0.0; BATCH]);
    s.train_step(&x, Targets::Labels(&y)).unwrap();
    let allocations = allocations_during(|| {
        for _ in 0..3 {
            s.train_step(&x, Targets::Labels(&y)).unwrap();
        }
        s.eval_batch(&x, Targets::Labels(&y), &mut out, &mut losses).unwrap();
        s.infer(&x, &mut out).unwrap();
    });
    assert_eq!(allocations, 0, "steps over float, i64 and bool tensors allocated");
}
