//! Textbook optimizer examples, worked by hand in the comments, against the reference kernels in
//! f64 and f32. The semantics are those of `torch.optim.SGD`, `torch.optim.Adam`,
//! `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_`.

use num_traits::NumCast;
use pock_engine::kernels::reference::{accumulate_grad, adam_update, execute, fill, grad_scale, sgd_update};
use pock_engine::kernels::{Float, NodeArgs, View, ViewMut};
use pock_engine::ops::{Adam, GradScale, Op, OptimOp, Sgd};

fn t<T: Float>(v: f64) -> T {
    NumCast::from(v).unwrap()
}

fn ts<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| t(x)).collect()
}

/// Hyperparameters are `f32` attributes of the op, so a value such as 0.9 enters even the f64
/// kernel as 0.89999998 (3e-8 relative); the f32 kernel also rounds every operation.
fn tolerance<T: Float>() -> f64 {
    if core::mem::size_of::<T>() == 4 {
        2e-6
    } else {
        1e-7
    }
}

#[track_caller]
fn assert_near<T: Float>(what: &str, got: &[T], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = tolerance::<T>();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f64();
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what} [{i}]: got {g}, want {w} ({} bytes per element)\n  all: {got:?}",
            core::mem::size_of::<T>()
        );
    }
}

fn sgd(momentum: f32, dampening: f32, nesterov: bool, weight_decay: f32, scaled: bool) -> Sgd {
    Sgd { momentum, dampening, nesterov, weight_decay, scaled }
}

/// One `SgdUpdate` step; `buf` is ignored (and must be empty) when momentum is 0.
fn sgd_step<T: Float>(s: &Sgd, param: &mut [T], buf: &mut [T], grad: &[f64], lr: f64, step: usize, scale: Option<f64>) {
    let shape = [param.len()];
    let (grad, lr, step_t, scale) = (ts::<T>(grad), [t::<T>(lr)], [T::from_usize(step)], [t::<T>(scale.unwrap_or(1.0))]);
    let mut inputs =
        vec![View { data: &grad[..], shape: &shape[..] }, View { data: &lr[..], shape: &[] }, View { data: &step_t[..], shape: &[] }];
    if s.scaled {
        inputs.push(View { data: &scale[..], shape: &[] });
    }
    let mut outputs = vec![ViewMut { data: param, shape: &shape[..] }];
    if s.momentum != 0.0 {
        outputs.push(ViewMut { data: buf, shape: &shape[..] });
    }
    sgd_update(s, &inputs, &mut outputs);
}

/// Runs `grads.len()` SGD steps from `p0`, checking the parameter after each against `want`.
fn sgd_run<T: Float>(what: &str, s: Sgd, p0: &[f64], grads: &[[f64; 2]], lr: f64, want: &[[f64; 2]]) -> Vec<T> {
    let mut param = ts::<T>(p0);
    // A stale buffer value must not leak into step 1: PyTorch creates the buffer from the first
    // gradient.
    let mut buf = if s.momentum != 0.0 { vec![t::<T>(99.0); p0.len()] } else { vec![] };
    for (k, (g, w)) in grads.iter().zip(want).enumerate() {
        sgd_step(&s, &mut param, &mut buf, g, lr, k + 1, None);
        assert_near(&format!("{what} step {}", k + 1), &param, w);
    }
    buf
}

const P0: [f64; 2] = [1.0, 2.0];
/// The gradients of three steps, fixed rather than derived from a loss so that every example can
/// be followed on paper.
const GRADS: [[f64; 2]; 3] = [[1.0, -1.0], [0.5, 0.5], [0.0, 2.0]];

fn sgd_plain_and_momentum<T: Float>() {
    // Plain SGD, lr 0.1: p -= 0.1 * g.
    //   [1, 2] - 0.1 * [1, -1] = [0.9, 2.1]; - 0.1 * [0.5, 0.5] = [0.85, 2.05]; - 0.1 * [0, 2] = [0.85, 1.85].
    sgd_run::<T>("sgd", sgd(0.0, 0.0, false, 0.0, false), &P0, &GRADS, 0.1, &[[0.9, 2.1], [0.85, 2.05], [0.85, 1.85]]);

    // Momentum 0.9, lr 0.1: buf = g on step 1, then buf = 0.9 * buf + g; p -= 0.1 * buf.
    //   step 1: buf = [1, -1],                              p = [0.9, 2.1]
    //   step 2: buf = [0.9 + 0.5, -0.9 + 0.5] = [1.4, -0.4],  p = [0.9 - 0.14, 2.1 + 0.04] = [0.76, 2.14]
    //   step 3: buf = [1.26 + 0, -0.36 + 2] = [1.26, 1.64],   p = [0.76 - 0.126, 2.14 - 0.164] = [0.634, 1.976]
    let buf = sgd_run::<T>("momentum", sgd(0.9, 0.0, false, 0.0, false), &P0, &GRADS, 0.1, &[[0.9, 2.1], [0.76, 2.14], [0.634, 1.976]]);
    assert_near("momentum buffer", &buf, &[1.26, 1.64]);
}

fn sgd_nesterov<T: Float>() {
    // Nesterov, momentum 0.9, lr 0.1: the buffer is as above, the step uses g + 0.9 * buf.
    //   step 1: buf = [1, -1],      g + 0.9 buf = [1.9, -1.9],                p = [0.81, 2.19]
    //   step 2: buf = [1.4, -0.4],  g + 0.9 buf = [0.5 + 1.26, 0.5 - 0.36] = [1.76, 0.14],
    //           p = [0.81 - 0.176, 2.19 - 0.014] = [0.634, 2.176]
    //   step 3: buf = [1.26, 1.64], g + 0.9 buf = [1.134, 2 + 1.476] = [1.134, 3.476],
    //           p = [0.634 - 0.1134, 2.176 - 0.3476] = [0.5206, 1.8284]
    let buf =
        sgd_run::<T>("nesterov", sgd(0.9, 0.0, true, 0.0, false), &P0, &GRADS, 0.1, &[[0.81, 2.19], [0.634, 2.176], [0.5206, 1.8284]]);
    assert_near("nesterov buffer", &buf, &[1.26, 1.64]);
}

fn sgd_dampening<T: Float>() {
    // Momentum 0.9, dampening 0.5, lr 0.1. Step 1 sets buf = g undamped, as PyTorch does.
    //   step 1: buf = [1, -1],                                         p = [0.9, 2.1]
    //   step 2: buf = 0.9 * [1, -1] + 0.5 * [0.5, 0.5] = [1.15, -0.65],  p = [0.9 - 0.115, 2.1 + 0.065] = [0.785, 2.165]
    let buf = sgd_run::<T>("dampening", sgd(0.9, 0.5, false, 0.0, false), &P0, &GRADS[..2], 0.1, &[[0.9, 2.1], [0.785, 2.165]]);
    assert_near("dampened buffer", &buf, &[1.15, -0.65]);
}

fn sgd_weight_decay<T: Float>() {
    // Weight decay 0.1 without momentum, lr 0.1: g' = g + 0.1 * p.
    //   step 1: g' = [1 + 0.1, -1 + 0.2] = [1.1, -0.8],        p = [1 - 0.11, 2 + 0.08] = [0.89, 2.08]
    //   step 2: g' = [0.5 + 0.089, 0.5 + 0.208] = [0.589, 0.708], p = [0.89 - 0.0589, 2.08 - 0.0708] = [0.8311, 2.0092]
    sgd_run::<T>("weight decay", sgd(0.0, 0.0, false, 0.1, false), &P0, &GRADS[..2], 0.1, &[[0.89, 2.08], [0.8311, 2.0092]]);

    // With momentum 0.9 the decayed gradient goes into the buffer:
    //   step 1: buf = [1.1, -0.8],                                             p = [0.89, 2.08]
    //   step 2: buf = 0.9 * [1.1, -0.8] + [0.589, 0.708] = [1.579, -0.012],    p = [0.89 - 0.1579, 2.08 + 0.0012] = [0.7321, 2.0812]
    let buf =
        sgd_run::<T>("weight decay + momentum", sgd(0.9, 0.0, false, 0.1, false), &P0, &GRADS[..2], 0.1, &[[0.89, 2.08], [0.7321, 2.0812]]);
    assert_near("weight decay buffer", &buf, &[1.579, -0.012]);
}

fn sgd_scaled<T: Float>() {
    // The runtime scale multiplies the raw gradient before weight decay is added:
    // scale 0.5, weight decay 0.1, lr 0.1: g' = 0.5 * [1, -1] + 0.1 * [1, 2] = [0.6, -0.3],
    // p = [1 - 0.06, 2 + 0.03] = [0.94, 2.03].
    let s = sgd(0.0, 0.0, false, 0.1, true);
    let mut param = ts::<T>(&P0);
    sgd_step(&s, &mut param, &mut [], &GRADS[0], 0.1, 1, Some(0.5));
    assert_near("scaled sgd", &param, &[0.94, 2.03]);
}

#[test]
fn sgd_textbook_f64() {
    sgd_plain_and_momentum::<f64>();
    sgd_nesterov::<f64>();
    sgd_dampening::<f64>();
    sgd_weight_decay::<f64>();
    sgd_scaled::<f64>();
}

#[test]
fn sgd_textbook_f32() {
    sgd_plain_and_momentum::<f32>();
    sgd_nesterov::<f32>();
    sgd_dampening::<f32>();
    sgd_weight_decay::<f32>();
    sgd_scaled::<f32>();
}

struct AdamState<T> {
    param: Vec<T>,
    exp_avg: Vec<T>,
    exp_avg_sq: Vec<T>,
}

impl<T: Float> AdamState<T> {
    fn new(p0: &[f64]) -> Self {
        // Adam's moments start at zero.
        AdamState { param: ts(p0), exp_avg: vec![T::zero(); p0.len()], exp_avg_sq: vec![T::zero(); p0.len()] }
    }

    fn step(&mut self, a: &Adam, grad: &[f64], lr: f64, step: usize) {
        let shape = [self.param.len()];
        let (grad, lr, step) = (ts::<T>(grad), [t::<T>(lr)], [T::from_usize(step)]);
        let inputs =
            [View { data: &grad[..], shape: &shape[..] }, View { data: &lr[..], shape: &[] }, View { data: &step[..], shape: &[] }];
        let mut outputs = [
            ViewMut { data: &mut self.param[..], shape: &shape[..] },
            ViewMut { data: &mut self.exp_avg[..], shape: &shape[..] },
            ViewMut { data: &mut self.exp_avg_sq[..], shape: &shape[..] },
        ];
        adam_update(a, &inputs, &mut outputs);
    }
}

fn adam(beta1: f32, beta2: f32, eps: f32, weight_decay: f32, decoupled: bool) -> Adam {
    Adam { beta1, beta2, eps, weight_decay, decoupled, scaled: false }
}

fn adam_first_step_moves_by_lr<T: Float>() {
    // PyTorch's defaults (0.9, 0.999, eps 1e-8), lr 0.01. On step 1, m = 0.1 g and v = 0.001 g^2;
    // bias correction divides them by 1 - 0.9 = 0.1 and 1 - 0.999 = 0.001, leaving m^ = g and
    // v^ = g^2, so the update is lr * g / (|g| + eps): lr times the sign of g, whatever its size.
    let mut s = AdamState::<T>::new(&[0.0, 0.0, 0.0]);
    let grad = [0.1, -5.0, 250.0];
    s.step(&adam(0.9, 0.999, 1e-8, 0.0, false), &grad, 0.01, 1);
    let want: Vec<f64> = grad.iter().map(|g| -0.01 * g / (g.abs() + 1e-8)).collect();
    assert_near("adam step 1", &s.param, &want);
    assert_near("adam step 1 magnitudes", &s.param.iter().map(|p| p.abs()).collect::<Vec<_>>(), &[0.01; 3]);
}

fn adam_three_steps<T: Float>() {
    // beta1 0.5, beta2 0.75 (exact in binary), eps 0, lr 0.1, p0 = [1, 2].
    // Bias corrections: bc1 = 1 - 0.5^t = 0.5, 0.75, 0.875; bc2 = 1 - 0.75^t = 0.25, 0.4375, 0.578125.
    let a = adam(0.5, 0.75, 0.0, 0.0, false);
    let mut s = AdamState::<T>::new(&P0);
    // Step 1, g = [1, -2]: m = 0.5 g = [0.5, -1], v = 0.25 g^2 = [0.25, 1];
    // m / bc1 = [1, -2], sqrt(v / bc2) = [1, 2]: p = [1 - 0.1, 2 + 0.1] = [0.9, 2.1].
    s.step(&a, &[1.0, -2.0], 0.1, 1);
    assert_near("adam step 1 param", &s.param, &[0.9, 2.1]);
    assert_near("adam step 1 exp_avg", &s.exp_avg, &[0.5, -1.0]);
    assert_near("adam step 1 exp_avg_sq", &s.exp_avg_sq, &[0.25, 1.0]);
    // Step 2, g = [-1, -2]: m = [0.25 - 0.5, -0.5 - 1] = [-0.25, -1.5],
    // v = [0.1875 + 0.25, 0.75 + 1] = [0.4375, 1.75]; m / bc1 = [-1/3, -2], sqrt(v / bc2) = [1, 2]:
    // p = [0.9 + 0.1/3, 2.1 + 0.1] = [0.933333..., 2.2].
    s.step(&a, &[-1.0, -2.0], 0.1, 2);
    assert_near("adam step 2 param", &s.param, &[0.9 + 0.1 / 3.0, 2.2]);
    assert_near("adam step 2 exp_avg", &s.exp_avg, &[-0.25, -1.5]);
    assert_near("adam step 2 exp_avg_sq", &s.exp_avg_sq, &[0.4375, 1.75]);
    // Step 3, g = [1, 2]: m = [-0.125 + 0.5, -0.75 + 1] = [0.375, 0.25],
    // v = [0.328125 + 0.25, 1.3125 + 1] = [0.578125, 2.3125]; m / bc1 = [3/7, 2/7],
    // sqrt(v / bc2) = [1, sqrt(4)] = [1, 2]: p = [0.9 + 1/30 - 0.3/7, 2.2 - 0.1/7] = [187/210, 153/70].
    s.step(&a, &[1.0, 2.0], 0.1, 3);
    assert_near("adam step 3 param", &s.param, &[187.0 / 210.0, 153.0 / 70.0]);
    assert_near("adam step 3 exp_avg", &s.exp_avg, &[0.375, 0.25]);
    assert_near("adam step 3 exp_avg_sq", &s.exp_avg_sq, &[0.578125, 2.3125]);
}

fn adam_weight_decay<T: Float>() {
    // Adam (coupled), weight decay 0.5, beta1 0.5, beta2 0.75, eps 0, lr 0.1, p0 = [1, -1],
    // g = [0.5, 0]: g' = g + 0.5 p = [1, -0.5]. Step 1 moves each element by lr against the sign
    // of g', so the element with a zero gradient moves too: p = [0.9, -0.9].
    let mut s = AdamState::<T>::new(&[1.0, -1.0]);
    s.step(&adam(0.5, 0.75, 0.0, 0.5, false), &[0.5, 0.0], 0.1, 1);
    assert_near("adam wd param", &s.param, &[0.9, -0.9]);
    assert_near("adam wd exp_avg", &s.exp_avg, &[0.5, -0.25]);
    assert_near("adam wd exp_avg_sq", &s.exp_avg_sq, &[0.25, 0.0625]);

    // AdamW (decoupled), same numbers with eps 1e-8: p *= 1 - 0.1 * 0.5 = 0.95 first, giving
    // [0.95, -0.95]; the moments see the raw gradient only, so element 1 (g = 0) gets no Adam
    // update (0 / (0 + eps) = 0) and element 0 moves by 0.1 * 0.5 / (0.5 + 1e-8).
    let mut s = AdamState::<T>::new(&[1.0, -1.0]);
    s.step(&adam(0.5, 0.75, 1e-8, 0.5, true), &[0.5, 0.0], 0.1, 1);
    assert_near("adamw param", &s.param, &[0.95 - 0.1 * 0.5 / (0.5 + 1e-8), -0.95]);
    assert_near("adamw exp_avg", &s.exp_avg, &[0.25, 0.0]);
    assert_near("adamw exp_avg_sq", &s.exp_avg_sq, &[0.0625, 0.0]);
}

#[test]
fn adam_textbook_f64() {
    adam_first_step_moves_by_lr::<f64>();
    adam_three_steps::<f64>();
    adam_weight_decay::<f64>();
}

#[test]
fn adam_textbook_f32() {
    adam_first_step_moves_by_lr::<f32>();
    adam_three_steps::<f32>();
    adam_weight_decay::<f32>();
}

fn scale_of<T: Float>(g: GradScale, grads: &[&[f64]]) -> f64 {
    let owned: Vec<Vec<T>> = grads.iter().map(|v| ts(v)).collect();
    let shapes: Vec<[usize; 1]> = owned.iter().map(|v| [v.len()]).collect();
    let views: Vec<View<T>> = owned.iter().zip(&shapes).map(|(v, s)| View { data: &v[..], shape: &s[..] }).collect();
    let mut out = [t::<T>(-7.0)];
    grad_scale(&g, &views, &mut ViewMut { data: &mut out, shape: &[] });
    out[0].to_f64()
}

fn grad_scale_cases<T: Float>() {
    // Two gradient tensors [3, 4] and [12]: global norm sqrt(9 + 16 + 144) = 13.
    let grads: [&[f64]; 2] = [&[3.0, 4.0], &[12.0]];
    // Without max_norm the scale is the multiplier (1/K for K accumulated micro-batches).
    assert_near("no clipping", &[t::<T>(scale_of::<T>(GradScale { max_norm: None, multiplier: 0.25 }, &grads))], &[0.25]);
    // max_norm 1: 1 / (13 + 1e-6), after which the global norm is 1 (up to the 1e-6).
    assert_near("clip to 1", &[t::<T>(scale_of::<T>(GradScale { max_norm: Some(1.0), multiplier: 1.0 }, &grads))], &[1.0 / (13.0 + 1e-6)]);
    // max_norm 100 > 13: no clipping, the coefficient is capped at 1.
    assert_near("norm below max", &[t::<T>(scale_of::<T>(GradScale { max_norm: Some(100.0), multiplier: 1.0 }, &grads))], &[1.0]);
    // Accumulated over K = 2 micro-batches: the norm is that of 0.5 * g, 6.5. With max_norm 5
    // the scale is 0.5 * 5 / (6.5 + 1e-6); with max_norm 10 it is just 0.5.
    assert_near(
        "accumulated, clipped",
        &[t::<T>(scale_of::<T>(GradScale { max_norm: Some(5.0), multiplier: 0.5 }, &grads))],
        &[0.5 * 5.0 / (6.5 + 1e-6)],
    );
    assert_near("accumulated, not clipped", &[t::<T>(scale_of::<T>(GradScale { max_norm: Some(10.0), multiplier: 0.5 }, &grads))], &[0.5]);
    // A NaN gradient makes the scale NaN, as in PyTorch, instead of hiding the divergence.
    assert!(scale_of::<T>(GradScale { max_norm: Some(1.0), multiplier: 1.0 }, &[&[f64::NAN, 1.0]]).is_nan());
}

#[test]
fn grad_scale_f64() {
    grad_scale_cases::<f64>();
}

#[test]
fn grad_scale_f32() {
    grad_scale_cases::<f32>();
}

#[test]
fn accumulate_and_fill() {
    let mut acc = [1.0f32, 2.0];
    accumulate_grad(View { data: &[0.5, -1.0], shape: &[2] }, &mut ViewMut { data: &mut acc, shape: &[2] });
    assert_eq!(acc, [1.5, 1.0]);
    let mut t = [1.0f64, 2.0, 3.0];
    fill(-0.25, &mut ViewMut { data: &mut t, shape: &[3] });
    assert_eq!(t, [-0.25; 3]);
}

#[test]
fn sgd_through_the_dispatcher_with_a_scale_input() {
    // The argument convention `[grad, lr, step, scale] -> [param*, buf*]` through `execute`:
    // momentum 0.9, scale 0.5, lr 0.1, step 1: buf = 0.5 * [1, -1] = [0.5, -0.5],
    // p = [1 - 0.05, 2 + 0.05] = [0.95, 2.05].
    let op = Op::Optim(OptimOp::SgdUpdate(sgd(0.9, 0.0, false, 0.0, true)));
    let (mut param, mut buf) = ([1.0f32, 2.0], [99.0f32, 99.0]);
    let inputs = [
        View { data: &[1.0f32, -1.0][..], shape: &[2][..] },
        View { data: &[0.1f32][..], shape: &[][..] },
        View { data: &[1.0f32][..], shape: &[][..] },
        View { data: &[0.5f32][..], shape: &[][..] },
    ];
    let mut outputs = [ViewMut { data: &mut param[..], shape: &[2][..] }, ViewMut { data: &mut buf[..], shape: &[2][..] }];
    execute(&op, NodeArgs::floats(&inputs, &mut outputs)).unwrap();
    assert_near("dispatched sgd param", &param, &[0.95, 2.05]);
    assert_near("dispatched sgd buffer", &buf, &[0.5, -0.5]);
}

/// A row-restricted update is the whole-tensor update of those rows: run on a `[4, 2]` parameter
/// with a `[2, 2]` gradient for rows 1..3, its rows equal the full update of a `[2, 2]` copy, the
/// state has the gradient's shape, and rows 0 and 3 keep their bits. Both optimizers, weight decay
/// included (it must not reach the rows left out).
#[test]
fn row_updates_write_their_rows_only() {
    use pock_engine::ops::ParamRows;
    let adam = Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, decoupled: true, scaled: false };
    let cases = [
        (
            OptimOp::SgdUpdate(sgd(0.9, 0.0, false, 0.1, false)),
            OptimOp::SgdUpdateRows { sgd: sgd(0.9, 0.0, false, 0.1, false), rows: ParamRows { start: 1, param_rows: 4 } },
            1,
        ),
        (OptimOp::AdamUpdate(adam), OptimOp::AdamUpdateRows { adam, rows: ParamRows { start: 1, param_rows: 4 } }, 2),
    ];
    let grad = [0.5f32, -1.0, 2.0, 0.25];
    for (whole, rows, states) in cases {
        let param: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let (mut p_rows, mut p_whole) = (param.clone(), param[2..6].to_vec());
        let (mut s_rows, mut s_whole) = (vec![[0.0f32; 4]; states], vec![[0.0f32; 4]; states]);
        for step in 1..=2 {
            let step = [step as f32];
            let inputs = [
                View { data: &grad[..], shape: &[2, 2][..] },
                View { data: &[0.1f32][..], shape: &[][..] },
                View { data: &step[..], shape: &[][..] },
            ];
            let mut outputs = vec![ViewMut { data: &mut p_rows[..], shape: &[4, 2][..] }];
            outputs.extend(s_rows.iter_mut().map(|s| ViewMut { data: &mut s[..], shape: &[2, 2][..] }));
            assert_eq!(Op::Optim(rows.clone()).output_shapes(&[&[2, 2], &[], &[]]).unwrap()[0], [4, 2]);
            execute(&Op::Optim(rows.clone()), NodeArgs::floats(&inputs, &mut outputs)).unwrap();
            let mut outputs = vec![ViewMut { data: &mut p_whole[..], shape: &[2, 2][..] }];
            outputs.extend(s_whole.iter_mut().map(|s| ViewMut { data: &mut s[..], shape: &[2, 2][..] }));
            execute(&Op::Optim(whole.clone()), NodeArgs::floats(&inputs, &mut outputs)).unwrap();
        }
        assert_eq!(p_rows[2..6], p_whole[..], "{rows:?}: the rows");
        assert_eq!(s_rows, s_whole, "{rows:?}: the state");
        assert_ne!(p_whole[..], param[2..6], "{rows:?}: the update moved the rows");
        assert_eq!([p_rows[0], p_rows[1], p_rows[6], p_rows[7]], [1.0, 2.0, 7.0, 8.0], "{rows:?}: other rows");
    }
    // Rows past the parameter's end are a shape error, not a panic.
    let bad = OptimOp::SgdUpdateRows { sgd: sgd(0.0, 0.0, false, 0.0, false), rows: ParamRows { start: 3, param_rows: 4 } };
    assert!(Op::Optim(bad).output_shapes(&[&[2, 2], &[], &[]]).is_err());
}
