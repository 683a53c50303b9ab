//! The gemm-based CPU matmul against the reference kernel, on random inputs, every transpose
//! combination, and sizes that straddle gemm's register and cache blocks.

use pock_engine::kernels::cpu::{self, CpuConfig};
use pock_engine::kernels::{reference, NodeArgs, View, ViewMut};
use pock_engine::ops::{DenseOp, MatMul, Op};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Runs `op` on one set of inputs with the reference kernel or the CPU backend.
fn run(op: &Op, a: View<f32>, b: View<f32>, y: &mut [f32], y_shape: &[usize], fast: Option<CpuConfig>) {
    let inputs = [a, b];
    let mut outputs = [ViewMut { data: y, shape: y_shape }];
    let args = NodeArgs::floats(&inputs, &mut outputs);
    match fast {
        Some(cfg) => {
            let mut scratch = vec![f32::NAN; cpu::scratch_elems(op, &[a.shape, b.shape], &[y_shape], cfg)];
            cpu::execute(op, args, &mut [], &mut scratch, cfg).unwrap()
        }
        None => reference::execute(op, args).unwrap(),
    }
}

/// Checks one product `op(a) @ op(b)` with `op(a)` of shape `[m, k]` and `op(b)` of shape `[k, n]`.
fn check(rng: &mut ChaCha8Rng, m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, cfg: CpuConfig) {
    let a_shape = if trans_a { [k, m] } else { [m, k] };
    let b_shape = if trans_b { [n, k] } else { [k, n] };
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let op = Op::Dense(DenseOp::MatMul(MatMul { trans_a, trans_b }));
    let y_shape = [m, n];

    let mut want = vec![0.0; m * n];
    run(&op, View { data: &a, shape: &a_shape }, View { data: &b, shape: &b_shape }, &mut want, &y_shape, None);
    // The output starts as garbage: the kernel must overwrite it, not accumulate into it.
    let mut got = vec![f32::NAN; m * n];
    run(&op, View { data: &a, shape: &a_shape }, View { data: &b, shape: &b_shape }, &mut got, &y_shape, Some(cfg));

    // Each f32 dot product of length k is within about k * 2^-24 * sum_p |a_ip b_pj| of the exact
    // value, whatever the summation order; the bound below allows both kernels that error and
    // a margin, but any indexing mistake is off by O(1).
    let (a_abs, b_abs): (Vec<f32>, Vec<f32>) = (a.iter().map(|v| v.abs()).collect(), b.iter().map(|v| v.abs()).collect());
    let mut magnitude = vec![0.0; m * n];
    run(&op, View { data: &a_abs, shape: &a_shape }, View { data: &b_abs, shape: &b_shape }, &mut magnitude, &y_shape, None);
    for i in 0..m * n {
        let tol = 1e-6 * k.max(1) as f32 * magnitude[i];
        assert!(
            (got[i] - want[i]).abs() <= tol,
            "m {m} k {k} n {n} trans_a {trans_a} trans_b {trans_b} threads {}: element ({}, {}) is {}, reference {} (tolerance {tol:e})",
            cfg.threads,
            i / n,
            i % n,
            got[i],
            want[i]
        );
    }
}

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

#[test]
fn odd_sizes_every_transpose() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sizes = [1, 2, 7, 33, 65];
    for (trans_a, trans_b) in TRANSPOSES {
        for &m in &sizes {
            for &k in &sizes {
                for &n in &sizes {
                    check(&mut rng, m, k, n, trans_a, trans_b, CpuConfig::default());
                }
            }
        }
    }
}

#[test]
fn random_shapes_single_and_multi_threaded() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for case in 0..40 {
        let (m, k, n) = (rng.random_range(1..150), rng.random_range(1..300), rng.random_range(1..150));
        let (trans_a, trans_b) = TRANSPOSES[case % 4];
        let threads = if case % 2 == 0 { 1 } else { 4 };
        check(&mut rng, m, k, n, trans_a, trans_b, CpuConfig { threads });
    }
}

#[test]
fn empty_inner_dimension_gives_zeros() {
    // With k = 0 the product is a sum over nothing: every output element is 0.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (trans_a, trans_b) in TRANSPOSES {
        check(&mut rng, 3, 0, 4, trans_a, trans_b, CpuConfig::default());
    }
}

/// BatchMatMul through the CPU backend (gemm per matrix) against the reference, with broadcast
/// batch axes on both sides and every transpose combination.
#[test]
fn batch_matmul_matches_the_reference() {
    use pock_engine::ops::MatMulOp;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (m, k, n) = (5, 33, 7);
    for (a_batch, b_batch, y_batch) in [(&[2usize, 1][..], &[3usize][..], [2usize, 3]), (&[2, 3], &[], [2, 3]), (&[1, 3], &[2, 1], [2, 3])]
    {
        for (trans_a, trans_b) in TRANSPOSES {
            let a_shape: Vec<usize> = a_batch.iter().copied().chain(if trans_a { [k, m] } else { [m, k] }).collect();
            let b_shape: Vec<usize> = b_batch.iter().copied().chain(if trans_b { [n, k] } else { [k, n] }).collect();
            let y_shape = [y_batch[0], y_batch[1], m, n];
            let a: Vec<f32> = (0..a_shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..b_shape.iter().product()).map(|_| rng.random_range(-1.0..1.0)).collect();
            let op = Op::MatMul(MatMulOp::BatchMatMul(MatMul { trans_a, trans_b }));
            assert_eq!(op.output_shapes(&[&a_shape, &b_shape]).unwrap(), [y_shape]);
            let numel = y_shape.iter().product();
            let mut want = vec![0.0; numel];
            run(&op, View { data: &a, shape: &a_shape }, View { data: &b, shape: &b_shape }, &mut want, &y_shape, None);
            let mut got = vec![f32::NAN; numel];
            run(
                &op,
                View { data: &a, shape: &a_shape },
                View { data: &b, shape: &b_shape },
                &mut got,
                &y_shape,
                Some(CpuConfig::default()),
            );
            // Entries are dot products of length 33 of values in [-1, 1]: any indexing mistake is
            // off by O(1), rounding by about 33 * 2^-24.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4, "{a_shape:?} x {b_shape:?} trans {trans_a} {trans_b}: element {i} is {g}, reference {w}");
            }
        }
    }
}

/// On a CPU with AVX-512F the gemm computes pairs of full tiles with 512-bit registers; it must
/// give the AVX2 kernel's bits (same fused multiply-adds in the same order), on shapes with full
/// and partial tiles, several depth blocks, and accumulation into `C`.
#[test]
fn the_avx512_micro_kernel_gives_the_avx2_kernels_bits() {
    use pock_engine::kernels::cpu::par::{avx512, force_isa, Isa};
    force_isa(None);
    if !avx512() {
        eprintln!("no AVX-512F on this CPU: the AVX-512 micro-kernel is not used here, nothing to compare");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (m, k, n, threads) in [(12, 7, 16, 1), (37, 600, 53, 2), (96, 1100, 200, 2), (13, 5, 40, 1), (150, 64, 31, 3)] {
        let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let op = Op::Dense(DenseOp::MatMul(MatMul { trans_a: false, trans_b: false }));
        let mut outs = Vec::new();
        for path in [None, Some(Isa::Avx2Fma)] {
            force_isa(path);
            let mut y = vec![f32::NAN; m * n];
            run(&op, View { data: &a, shape: &[m, k] }, View { data: &b, shape: &[k, n] }, &mut y, &[m, n], Some(CpuConfig { threads }));
            outs.push(y);
        }
        force_isa(None);
        let same = outs[0].iter().zip(&outs[1]).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{m}x{k}x{n} on {threads} threads: the AVX-512 and AVX2 kernels differ");
    }
}
