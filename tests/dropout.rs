//! Seeded dropout of an imported training-mode graph, run by the engine: a new mask every step,
//! the same masks after a resume, and no dropout in evaluation.

use pock::compiler::onnx::{
    import_model, DataType, Dim, DropoutMode, ImportOptions, LossKind, Node, OnnxModel, Tensor, TensorValues, ValueInfo,
};
use pock::compiler::CompileOptions;
use pock::engine::{Session, SessionOptions, Targets};

const BATCH: usize = 8;
const FEATURES: usize = 32;

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
    Node::new(op, inputs, outputs, Vec::new())
}

fn floats(name: &str, dims: &[usize], values: Vec<f32>) -> Tensor {
    Tensor { name: name.into(), dims: dims.to_vec(), values: TensorValues::F32(values) }
}

/// `MatMul(Dropout(x, 0.5, training), w) + b` as a classifier of 3 classes.
fn plan(mode: DropoutMode, seed: u64) -> Vec<u8> {
    let model = OnnxModel {
        ir_version: 8,
        opset: 17,
        opset_imports: vec![(String::new(), 17)],
        producer: String::new(),
        graph_name: String::new(),
        initializers: vec![
            floats("ratio", &[], vec![0.5]),
            Tensor { name: "training".into(), dims: vec![], values: TensorValues::Bool(vec![true]) },
            floats("w", &[FEATURES, 3], (0..FEATURES * 3).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect()),
            floats("b", &[BATCH, 3], vec![0.0; BATCH * 3]),
        ],
        inputs: vec![ValueInfo {
            name: "x".into(),
            dtype: Some(DataType::F32),
            shape: Some(vec![Dim::Fixed(BATCH), Dim::Fixed(FEATURES)]),
        }],
        outputs: vec![ValueInfo { name: "y".into(), dtype: Some(DataType::F32), shape: None }],
        value_info: vec![],
        nodes: vec![
            node("Dropout", &["x", "ratio", "training"], &["d"]),
            node("MatMul", &["d", "w"], &["m"]),
            node("Add", &["m", "b"], &["y"]),
        ],
    };
    let options = ImportOptions { loss: LossKind::CrossEntropy, dropout: mode, seed, ..Default::default() };
    let forward = import_model(&model, "dropout", &options).unwrap().forward;
    let compile = CompileOptions { learning_rate: 0.1, ..Default::default() };
    forward.into_training(compile).unwrap().into_plan().unwrap().to_bytes()
}

fn batch(k: usize) -> (Vec<f32>, Vec<i64>) {
    let x = (0..BATCH * FEATURES).map(|i| ((i * 7 + k * 3) % 17) as f32 * 0.1 - 0.8).collect();
    let y = (0..BATCH).map(|i| ((i + k) % 3) as i64).collect();
    (x, y)
}

const OPTS: SessionOptions =
    SessionOptions { threads: 1, reference_kernels: false, backend: pock_engine::session::BackendChoice::Cpu, loss_every: 1 };

fn losses(s: &mut Session, steps: std::ops::Range<usize>) -> Vec<u32> {
    steps
        .map(|k| {
            let (x, y) = batch(k);
            s.train_step(&x, Targets::Labels(&y)).unwrap().to_bits()
        })
        .collect()
}

#[test]
fn masks_change_every_step_and_resume_draws_the_same_ones() {
    let bytes = plan(DropoutMode::On, 11);
    // With the learning rate at 0 and one batch, only the mask can change the loss.
    let mut frozen = Session::from_bytes(&bytes, OPTS).unwrap();
    frozen.set_learning_rate(0.0);
    let (x, y) = batch(0);
    let same_batch: Vec<f32> = (0..4).map(|_| frozen.train_step(&x, Targets::Labels(&y)).unwrap()).collect();
    for pair in same_batch.windows(2) {
        assert_ne!(pair[0], pair[1], "a new mask each step: {same_batch:?}");
    }
    let mut off = Session::from_bytes(&plan(DropoutMode::Off, 11), OPTS).unwrap();
    off.set_learning_rate(0.0);
    let identity: Vec<f32> = (0..3).map(|_| off.train_step(&x, Targets::Labels(&y)).unwrap()).collect();
    assert!(identity.windows(2).all(|p| p[0] == p[1]), "--dropout off is deterministic: {identity:?}");
    // Another seed draws other masks.
    let mut reseeded = Session::from_bytes(&plan(DropoutMode::On, 12), OPTS).unwrap();
    reseeded.set_learning_rate(0.0);
    assert_ne!(reseeded.train_step(&x, Targets::Labels(&y)).unwrap(), same_batch[0]);

    // Training straight through against training, saving, resuming in a new session.
    let mut straight = Session::from_bytes(&bytes, OPTS).unwrap();
    let expected = losses(&mut straight, 0..6);
    let dir = std::env::temp_dir().join(format!("pock-dropout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    let mut first = Session::from_bytes(&bytes, OPTS).unwrap();
    let mut got = losses(&mut first, 0..3);
    first.save(&ckpt).unwrap();
    drop(first);
    let mut second = Session::from_bytes(&bytes, OPTS).unwrap();
    second.resume(&ckpt).unwrap();
    got.extend(losses(&mut second, 3..6));
    assert_eq!(got, expected, "the resumed run draws the masks of the uninterrupted one");
    assert_eq!(second.read_tensor("w").unwrap(), straight.read_tensor("w").unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluation_does_not_drop() {
    let (x, y) = batch(1);
    let run = |bytes: &[u8]| {
        let mut s = Session::from_bytes(bytes, OPTS).unwrap();
        let (mut out, mut loss) = (vec![0.0; BATCH * 3], vec![0.0; BATCH]);
        s.eval_batch(&x, Targets::Labels(&y), &mut out, &mut loss).unwrap();
        let first = out.clone();
        s.eval_batch(&x, Targets::Labels(&y), &mut out, &mut loss).unwrap();
        assert_eq!(first, out, "eval draws nothing");
        out
    };
    assert_eq!(run(&plan(DropoutMode::On, 11)), run(&plan(DropoutMode::Off, 11)));
}
