//! Whole-model gradient checks: the backward graph the compiler derives for zoo models, evaluated
//! in f64, against central finite differences of the loss.

use pock::compiler::gradcheck::{assert_close, check_model, STEP};

fn check(spec: &str, batch: usize, max_tensors: usize, elements: usize, step: f64) {
    let forward = pock::models::build(spec, batch, 3).unwrap();
    let checks = check_model(forward, 11, max_tensors, elements, step).unwrap();
    assert!(checks.len() >= max_tensors.min(4), "{spec}: only {} tensors checked", checks.len());
    assert_close(spec, &checks, 1e-6);
}

#[test]
fn mlp_gradients_match_finite_differences() {
    check("zoo:mlp:inputs=5,hidden=7,depth=2,classes=3", 4, 100, 12, STEP);
}

#[test]
fn mlp_regression_gradients_match_finite_differences() {
    check("zoo:mlp:inputs=4,hidden=6,depth=1,task=regression,outputs=2", 3, 100, 12, STEP);
}

#[test]
fn cnn_gradients_match_finite_differences() {
    check("zoo:cnn:channels=2,size=8,classes=3,width=4", 2, 100, 6, STEP);
}

#[test]
fn mobilenetv2_gradients_match_finite_differences() {
    // Batch 4: with batch 2 the last blocks normalise over two elements per channel, which makes
    // their gradients vanish (~1e-8) and any finite difference meaningless. Step 1e-8: see
    // `check_model` on kinks.
    check("zoo:mobilenetv2:classes=5,size=32,width=0.25", 4, 14, 4, 1e-8);
}
