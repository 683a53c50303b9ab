//! Gradient check of seeded dropout: with the step counter fixed the mask is fixed, so the rule
//! (`dy * mask`) must match central finite differences of the forward op in f64.

use pock_compiler::gradcheck::{assert_close, check_op, CaseInput};
use pock_engine::kernels::reference::random::key;
use pock_engine::ops::{Dropout, RandomOp};

#[test]
fn dropout_gradient_is_the_scaled_mask() {
    for (ratio, seed) in [(0.3f32, 901u64), (0.5, 902), (0.0, 903)] {
        // The counter is an int64 scalar, as a step number: random, not differentiated.
        let inputs = [CaseInput::Float(vec![3, 5, 4]), CaseInput::Labels(vec![], 1 << 20)];
        let op = RandomOp::Dropout(Dropout { ratio, key: key(seed, 1) });
        let checks = check_op(op, &inputs, seed).unwrap();
        assert_eq!(checks.len(), 1, "only x is differentiated");
        assert_close(&format!("Dropout ratio {ratio}"), &checks, 1e-6);
    }
}
