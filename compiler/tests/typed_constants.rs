//! Constants of every dtype reach the plan: an int64 index table feeds a Gather and a bool mask
//! feeds a Where, both stored in the weight section in their own dtype. The engine trains the
//! model bit for bit like the f32 interpreter, which reads the same constants from the IR.

use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{DType, Graph, Role, RuntimeScalar, TensorId, Values};
use pock_compiler::{CompileOptions, ForwardGraph, Task};
use pock_engine::ops::{BroadcastOp, DenseOp, MatMul, MoveOp};
use pock_engine::{Session, SessionOptions, Targets};

mod support;
use support::emit;

const BATCH: usize = 3;
const ROWS: usize = 4;
const DIM: usize = 3;
const CLASSES: usize = 2;

fn model() -> ForwardGraph {
    let mut g = Graph::new();
    let x = g.input("x", vec![BATCH, ROWS, DIM], DType::F32, Role::Input);
    let n = 5 * DIM;
    let table = g.parameter("table", vec![5, DIM], (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect());
    let ids = g.typed_constant("ids", vec![ROWS], Values::I64(vec![4, 0, -3, 2]));
    let keep = g.typed_constant("keep", vec![ROWS, DIM], Values::Bool((0..ROWS * DIM).map(|i| i % 4 != 1).collect()));
    let fill = g.constant("fill", vec![], vec![-1.5]);
    let rows = emit(&mut g, "rows", MoveOp::Gather { axis: 0 }, &[table, ids]);
    let masked = emit(&mut g, "masked", BroadcastOp::Where, &[keep, rows, fill]);
    let h = emit(&mut g, "h", BroadcastOp::Mul, &[x, masked]);
    let h = emit(&mut g, "flat", DenseOp::Reshape { shape: vec![BATCH, ROWS * DIM] }, &[h]);
    let m = ROWS * DIM * CLASSES;
    let w = g.parameter("w", vec![CLASSES, ROWS * DIM], (0..m).map(|i| ((i * 13 % 7) as f32 - 3.0) / 5.0).collect());
    let logits = emit(&mut g, "logits", DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[h, w]);
    ForwardGraph { name: "typed".into(), graph: g, inputs: vec![x], output: logits, task: Task::Classification { classes: CLASSES } }
}

#[test]
fn int64_and_bool_constants_train_in_the_engine_like_the_interpreter() {
    let t = model().into_training(CompileOptions { learning_rate: 0.3, ..CompileOptions::default() }).unwrap();
    let plan = t.clone().into_plan().unwrap();
    let dtype_of = |name: &str| plan.plan.tensors.iter().find(|i| i.name == name).map(|i| i.dtype);
    assert_eq!(dtype_of("ids"), Some(DType::I64));
    assert_eq!(dtype_of("keep"), Some(DType::Bool));
    let bytes = plan.to_bytes();
    let x: Vec<f32> = (0..BATCH * ROWS * DIM).map(|i| ((i * 29 % 17) as f32 - 8.0) / 8.0).collect();
    let y: Vec<i64> = (0..BATCH).map(|i| (i % CLASSES) as i64).collect();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap();
    let losses: Vec<f32> = (0..6).map(|_| s.train_step(&x, Targets::Labels(&y)).unwrap()).collect();

    let mut it = Interpreter::<f32>::new(&t.graph);
    let lr = t.graph.tensors.iter().position(|d| d.role == Role::RuntimeScalar(RuntimeScalar::LearningRate));
    for (step, &loss) in losses.iter().enumerate() {
        it.set(t.train_input, x.clone());
        it.set_int(t.train_target, y.clone());
        if let Some(lr) = lr {
            it.set(TensorId(lr as u32), vec![0.3]);
        }
        it.run(t.graph.program_nodes(pock_compiler::ir::Program::Train)).unwrap();
        assert_eq!(it.get(t.train_loss).unwrap()[0].to_bits(), loss.to_bits(), "step {step}: engine {loss}");
    }
    assert!(losses[5] < losses[0], "training lowers the loss: {losses:?}");
}

#[test]
fn an_initial_value_of_the_wrong_dtype_is_refused_when_planning() {
    let mut f = model();
    let ids = f.graph.find("ids").unwrap();
    f.graph.tensor_mut(ids).init = Some(Values::F32(vec![0.0; ROWS]));
    let e = f.into_training(CompileOptions::default()).unwrap().into_plan().unwrap_err();
    assert!(e.to_string().contains("4 float32 values, but the tensor is int64"), "{e}");
}
