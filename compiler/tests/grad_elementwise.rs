//! Gradient checks of the broadcasting and unary families: each rule's backward nodes, evaluated
//! in f64, against central finite differences of the forward op, on broadcast shapes.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::kernels::unary::{
    Abs, Cos, Elu, Erf, Exp, HardSigmoid, LeakyRelu, Log, Neg, Reciprocal, Sigmoid, Sin, Softplus, Sqrt, Tanh,
};
use pock_engine::ops::{BroadcastOp, Op, UnaryFn, UnaryOp};

const TOLERANCE: f64 = 1e-6;

fn float(shape: &[usize]) -> CaseInput {
    CaseInput::Float(shape.to_vec())
}

fn positive(shape: &[usize]) -> CaseInput {
    CaseInput::Positive(shape.to_vec())
}

/// Checks `op` and that every differentiated input got a gradient of its own shape (the checker
/// compares lengths, so a gradient left at the broadcast shape fails).
fn check(what: &str, op: impl Into<Op>, inputs: &[CaseInput], seed: u64) {
    let checks = check_op(op, inputs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let differentiated = inputs.iter().filter(|i| matches!(i, CaseInput::Float(_) | CaseInput::Positive(_))).count();
    assert_eq!(checks.len(), differentiated, "{what}: every float input is checked");
    assert_close(what, &checks, TOLERANCE);
}

/// Shape pairs that exercise broadcasting: a trailing vector (a bias `[C]`), both operands
/// broadcast, a scalar on either side, and equal shapes.
const PAIRS: [(&[usize], &[usize]); 5] = [(&[2, 3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[], &[2, 3]), (&[3, 2], &[]), (&[3, 4], &[3, 4])];

#[test]
fn add_sub_mul_broadcast() {
    for (i, (a, b)) in PAIRS.iter().enumerate() {
        let seed = 100 + i as u64;
        check(&format!("Add {a:?} {b:?}"), BroadcastOp::Add, &[float(a), float(b)], seed);
        check(&format!("Sub {a:?} {b:?}"), BroadcastOp::Sub, &[float(a), float(b)], seed);
        check(&format!("Mul {a:?} {b:?}"), BroadcastOp::Mul, &[float(a), float(b)], seed);
    }
}

#[test]
fn div_broadcast() {
    for (i, (a, b)) in PAIRS.iter().enumerate() {
        check(&format!("Div {a:?} {b:?}"), BroadcastOp::Div, &[float(a), positive(b)], 200 + i as u64);
    }
}

#[test]
fn pow_with_respect_to_base_and_exponent() {
    for (i, (a, b)) in PAIRS.iter().enumerate() {
        check(&format!("Pow {a:?} {b:?}"), BroadcastOp::Pow, &[positive(a), float(b)], 300 + i as u64);
    }
    // The usual case, a constant exponent (RMSNorm's x^2): only the base is differentiated, and
    // a negative base is fine with an integer exponent.
    check("Pow x^2", BroadcastOp::Pow, &[float(&[2, 3, 4]), CaseInput::Fixed(vec![], vec![2.0])], 310);
    check("Pow x^-0.5", BroadcastOp::Pow, &[positive(&[3, 4]), CaseInput::Fixed(vec![1], vec![-0.5])], 311);
}

#[test]
fn max_min_broadcast() {
    // Random inputs never tie, so this checks the routing; the tie rule (half each) is checked on
    // hand-computed values in the engine's tests of `MaxGrad`.
    for (i, (a, b)) in PAIRS.iter().enumerate() {
        check(&format!("Max {a:?} {b:?}"), BroadcastOp::Max, &[float(a), float(b)], 400 + i as u64);
        check(&format!("Min {a:?} {b:?}"), BroadcastOp::Min, &[float(a), float(b)], 410 + i as u64);
    }
}

#[test]
fn where_routes_the_gradient_by_the_condition() {
    let cases: [[&[usize]; 3]; 3] = [[&[2, 1, 4], &[3, 1], &[4]], [&[3, 4], &[3, 4], &[3, 4]], [&[2, 3], &[], &[2, 3]]];
    for (i, [c, a, b]) in cases.iter().enumerate() {
        check(&format!("Where {c:?} {a:?} {b:?}"), BroadcastOp::Where, &[CaseInput::Mask(c.to_vec()), float(a), float(b)], 500 + i as u64);
    }
}

#[test]
fn every_unary_function() {
    let shape = [3, 5];
    let cases: Vec<(UnaryFn, CaseInput)> = vec![
        (UnaryFn::Neg(Neg), float(&shape)),
        (UnaryFn::Exp(Exp), float(&shape)),
        (UnaryFn::Log(Log), positive(&shape)),
        (UnaryFn::Sqrt(Sqrt), positive(&shape)),
        (UnaryFn::Reciprocal(Reciprocal), positive(&shape)),
        (UnaryFn::Tanh(Tanh), float(&shape)),
        (UnaryFn::Sigmoid(Sigmoid), float(&shape)),
        (UnaryFn::Erf(Erf), float(&shape)),
        (UnaryFn::Abs(Abs), float(&shape)),
        (UnaryFn::Sin(Sin), float(&shape)),
        (UnaryFn::Cos(Cos), float(&shape)),
        (UnaryFn::Softplus(Softplus), float(&shape)),
        (UnaryFn::LeakyRelu(LeakyRelu { alpha: 0.1 }), float(&shape)),
        (UnaryFn::Elu(Elu { alpha: 1.5 }), float(&shape)),
        // Inputs in [-1, 1] give alpha x + beta in [-0.5, 1.5]: all three regions are covered.
        (UnaryFn::HardSigmoid(HardSigmoid { alpha: 1.0, beta: 0.5 }), float(&shape)),
    ];
    for (i, (f, input)) in cases.into_iter().enumerate() {
        check(f.name(), UnaryOp::Map(f), &[input], 600 + i as u64);
    }
}

/// At a tie, Max and Min give each operand half of the gradient (PyTorch's rule for
/// `torch.maximum`/`torch.minimum`), and a broadcast operand's shares are summed.
#[test]
fn max_min_split_ties_in_half() {
    use pock_compiler::interp::Interpreter;
    use pock_compiler::ir::{Graph, Phase, Program};
    use pock_compiler::ops::{gradient, GradCtx};
    for (op, want_a, want_b) in [(BroadcastOp::Max, [0.0, 0.5, 1.0], 1.5), (BroadcastOp::Min, [1.0, 0.5, 0.0], 1.5)] {
        let mut g = Graph::new();
        let a = g.parameter("a", vec![3], vec![1.0, 2.0, 3.0]);
        let b = g.parameter("b", vec![], vec![2.0]);
        g.emit("op", op.clone(), &[a, b], Phase::Forward, Program::Train).unwrap();
        let dy = g.constant("dy", vec![3], vec![1.0; 3]);
        let node = g.nodes[0].clone();
        let grads = gradient(&mut GradCtx::new(&mut g, "op"), &node, &[Some(dy)], &[true, true]).unwrap();
        let mut it = Interpreter::<f64>::new(&g);
        it.run(g.nodes.iter()).unwrap();
        assert_eq!(it.get(grads[0].unwrap()).unwrap(), want_a, "{op:?} da");
        assert_eq!(it.get(grads[1].unwrap()).unwrap(), [want_b], "{op:?} db");
    }
}
