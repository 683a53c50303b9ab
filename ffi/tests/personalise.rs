//! The phone-style example (`ffi/examples/personalise`) learns its user: the app's predictions in
//! the last sessions are far more often right than in the first, across an app restart that
//! resumes from the atomically saved checkpoint.

mod common;

#[path = "../examples/personalise/main.rs"]
mod personalise;

#[test]
fn personalisation_learns_the_user_across_a_restart() {
    let dir = common::workdir("personalise");
    let plan = dir.join("personal.plan");
    common::write_mlp_plan(&plan);
    let report = personalise::run(&plan, &dir, 24).unwrap();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    // Before any training the model guesses (a quarter right on average); the user's mapping
    // is learnt within a few sessions.
    let (first, last) = (mean(&report.accuracy[..2]), mean(&report.accuracy[18..]));
    assert!(first < 0.5 && last > 0.85, "accuracy went from {first} to {last}: {:?}", report.accuracy);
    assert_eq!(report.optimizer_steps, 24 * 8, "the restart lost steps");
    // The checkpoint on disk is the last one: a fresh session resumes at the final step.
    let mut session = pock::engine::Session::load(&plan, Default::default()).unwrap();
    session.resume(&report.checkpoint).unwrap();
    assert_eq!(session.optimizer_steps(), 24 * 8);
    let _ = std::fs::remove_dir_all(&dir);
}
