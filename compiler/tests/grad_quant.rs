//! The quant family's gradient rules against the float path. Rounding has no useful finite
//! differences, so instead of a finite-difference check the straight-through gradients of a
//! `QLinear` are compared with the gradients the (finite-difference-checked, `grad_dense.rs`)
//! dense rules give for the same layer computed in float on the dequantized values:
//! `y = Dequantize(x) @ W^T + B` with `W = w_scale * round(w)` and `B = x.scale * w_scale *
//! round(b)`. The integer-domain gradients are the chain rule's `dw = w_scale * dW` and
//! `db = x.scale * w_scale * dB`, and QAS divides them by `w_scale^2` and `(x.scale * w_scale)^2`.

use pock_compiler::interp::Interpreter;
use pock_compiler::ir::{DType, Graph, Phase, Program, Role, TensorId};
use pock_compiler::ops::{gradient, GradCtx};
use pock_engine::ops::{DenseOp, MatMul, QLinear, QOutput, QParams, QuantOp};

const X: QParams = QParams { scale: 0.07, zero_point: -20 };
const N: usize = 3;
const I: usize = 5;
const O: usize = 4;

/// A deterministic value in [-1, 1) for index `i` of stream `k`.
fn wave(k: u64, i: usize) -> f32 {
    let h = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)) >> 40;
    (h % 2000) as f32 / 1000.0 - 1.0
}

fn emit(g: &mut Graph, name: &str, op: impl Into<pock_engine::ops::Op>, inputs: &[TensorId]) -> TensorId {
    g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0]
}

fn grads(g: &mut Graph, node: usize, dy: TensorId, needs: &[bool]) -> Vec<Option<TensorId>> {
    let node = g.nodes[node].clone();
    gradient(&mut GradCtx::new(g, &node.name), &node, &[Some(dy)], needs).unwrap()
}

fn close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // The float layer's weights and bias are f32 products (`round(w) * w_scale`), the int8
        // kernel multiplies in f64 here: they differ by f32 rounding, about 1e-7 relative.
        assert!((g - w).abs() <= 1e-6 * scale, "{what}[{i}]: {g} vs {w}");
    }
}

fn check(qas: bool) {
    let mut g = Graph::new();
    let x = g.input("x", vec![N, I], DType::F32, Role::Input);
    let dy = g.input("dy", vec![N, O], DType::F32, Role::Input);
    let w_master: Vec<f32> = (0..O * I).map(|i| 120.0 * wave(1, i)).collect();
    let w_scale: Vec<f32> = (0..O).map(|o| 0.01 + 0.005 * o as f32).collect();
    let b_master: Vec<f32> = (0..O).map(|o| 3000.0 * wave(2, o)).collect();
    let w = g.parameter("w", vec![O, I], w_master.clone());
    let ws = g.constant("w_scale", vec![O], w_scale.clone());
    let b = g.parameter("b", vec![O], b_master.clone());
    let xq = emit(&mut g, "q", QuantOp::Quantize(X), &[x]);
    let layer = QLinear { x: X, out: QOutput::F32, qas };
    let y = emit(&mut g, "lin", QuantOp::Linear(layer), &[xq, w, ws, b]);
    let q = grads(&mut g, 1, dy, &[true, true, false, true]);
    let (dx, dw, db) = (q[0].unwrap(), q[1].unwrap(), q[3].unwrap());

    // The same layer in float on the dequantized values, differentiated by the dense rules.
    let w_real: Vec<f32> = (0..O * I).map(|i| w_master[i].round() * w_scale[i / I]).collect();
    let b_real: Vec<f32> = (0..O).map(|o| b_master[o].round() * X.scale * w_scale[o]).collect();
    let wr = g.parameter("w_real", vec![O, I], w_real);
    let br = g.parameter("b_real", vec![O], b_real);
    let xr = emit(&mut g, "x_real", QuantOp::Dequantize(X), &[xq]);
    let first = g.nodes.len();
    let mm = emit(&mut g, "mm", DenseOp::MatMul(MatMul { trans_a: false, trans_b: true }), &[xr, wr]);
    let yr = emit(&mut g, "bias", DenseOp::BiasAdd, &[mm, br]);
    let fb = grads(&mut g, first + 1, dy, &[true, true]);
    let fm = grads(&mut g, first, fb[0].unwrap(), &[true, true]);
    let (dx_real, dw_real, db_real) = (fm[0].unwrap(), fm[1].unwrap(), fb[1].unwrap());

    let mut interp = Interpreter::<f64>::new(&g);
    interp.set(x, (0..N * I).map(|i| 4.0 * f64::from(wave(3, i))).collect());
    interp.set(dy, (0..N * O).map(|i| f64::from(wave(4, i))).collect());
    interp.run(&g.nodes).unwrap();
    let get = |t: TensorId| interp.get(t).unwrap().to_vec();
    close("y", &get(y), &get(yr));
    close("dx", &get(dx), &get(dx_real));
    let c = |k: f64| if qas { 1.0 / k } else { k };
    let want_dw: Vec<f64> = get(dw_real).iter().enumerate().map(|(i, v)| v * c(f64::from(w_scale[i / I]))).collect();
    close("dw", &get(dw), &want_dw);
    let want_db: Vec<f64> = get(db_real).iter().enumerate().map(|(o, v)| v * c(f64::from(X.scale) * f64::from(w_scale[o]))).collect();
    close("db", &get(db), &want_db);
}

#[test]
fn straight_through_gradients_match_the_float_layer() {
    check(false);
}

#[test]
fn qas_scales_the_weight_and_bias_gradients() {
    check(true);
}
