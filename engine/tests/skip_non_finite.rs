//! The optimizer kernels' skip rule on non-finite gradients, in f32 and f64: updates write
//! nothing, `GradScale` turns a non-finite norm into a NaN scale, `CountNonFinite` counts.

use pock_engine::kernels::reference::{adam_update, count_non_finite, grad_scale, sgd_update};
use pock_engine::kernels::{Float, View, ViewMut};
use pock_engine::ops::{Adam, GradScale, Sgd};

fn cases<T: Float>() {
    let bad = [T::from_f32(1.0), T::nan(), T::infinity(), T::neg_infinity()];
    for b in &bad[1..] {
        let grad = [T::from_f32(0.5), *b];
        let (lr, step, scale) = ([T::from_f32(0.1)], [T::from_f32(2.0)], [T::one()]);
        let inputs = [
            View { data: &grad[..], shape: &[2][..] },
            View { data: &lr[..], shape: &[][..] },
            View { data: &step[..], shape: &[][..] },
            View { data: &scale[..], shape: &[][..] },
        ];
        let sgd = Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.01, scaled: true };
        let (mut p, mut buf) = ([T::one(), T::from_f32(2.0)], [T::from_f32(0.3), T::from_f32(-0.3)]);
        sgd_update(&sgd, &inputs, &mut [ViewMut { data: &mut p, shape: &[2] }, ViewMut { data: &mut buf, shape: &[2] }]);
        assert_eq!((p, buf), ([T::one(), T::from_f32(2.0)], [T::from_f32(0.3), T::from_f32(-0.3)]), "sgd with gradient {b:?}");

        let adam = Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled: true, scaled: false };
        let (mut p, mut m, mut v) = ([T::one(); 2], [T::from_f32(0.1); 2], [T::from_f32(0.2); 2]);
        let mut outputs =
            [ViewMut { data: &mut p, shape: &[2] }, ViewMut { data: &mut m, shape: &[2] }, ViewMut { data: &mut v, shape: &[2] }];
        adam_update(&adam, &inputs[..3], &mut outputs);
        assert_eq!((p, m, v), ([T::one(); 2], [T::from_f32(0.1); 2], [T::from_f32(0.2); 2]), "adam with gradient {b:?}");

        let mut count = [T::from_f32(3.0)];
        count_non_finite(View { data: &grad[..], shape: &[2] }, &mut ViewMut { data: &mut count, shape: &[] });
        assert_eq!(count[0], T::from_f32(4.0));
        for max_norm in [Some(1.0), None] {
            let mut s = [T::zero()];
            let finite = [T::from_f32(3.0)];
            let grads = [View { data: &finite[..], shape: &[1][..] }, View { data: &grad[..], shape: &[2][..] }];
            grad_scale(&GradScale { max_norm, multiplier: 0.5 }, &grads, &mut ViewMut { data: &mut s, shape: &[] });
            assert!(s[0].is_nan(), "grad_scale {max_norm:?} with gradient {b:?}: {:?}", s[0]);
        }
    }
    // A finite gradient whose squares overflow still skips the clipped step.
    let huge = [T::from_f32(3.0e38)];
    let mut s = [T::zero()];
    grad_scale(
        &GradScale { max_norm: Some(1.0), multiplier: 1.0 },
        &[View { data: &huge[..], shape: &[1] }],
        &mut ViewMut { data: &mut s, shape: &[] },
    );
    assert_eq!(s[0].is_nan(), core::mem::size_of::<T>() == 4, "f32 overflows, f64 does not: {:?}", s[0]);
    // Finite values count nothing.
    let mut count = [T::zero()];
    count_non_finite(View { data: &bad[..1], shape: &[1] }, &mut ViewMut { data: &mut count, shape: &[] });
    assert_eq!(count[0], T::zero());
}

#[test]
fn non_finite_gradients_skip_f32() {
    cases::<f32>();
}

#[test]
fn non_finite_gradients_skip_f64() {
    cases::<f64>();
}
