//! A plan with two int64 inputs (token ids and an attention mask) and per-position labels,
//! driven through the CLI from an `.npz` that holds one array per input plus `y`: train, eval and
//! infer work, shuffling keeps the arrays of a sample together (a sample whose label needs its
//! own ids trains only if they stay aligned), and a missing array is named with what the file
//! holds. The dataset layer reads the same file directly.

use std::path::Path;

use ndarray::{Array2, ArrayD};
use ndarray_npy::NpzWriter;
use pock::compiler::ir::{DType, Graph, Phase, Program, Role, TensorId};
use pock::compiler::{CompileOptions, ForwardGraph, Task};
use pock::data::{Dataset, Targets};
use pock::engine::ops::{BroadcastOp, CastOp, DenseOp, MatMul, MatMulOp, MoveOp};

mod common;
use common::{fails, pock, s, workdir};

const BATCH: usize = 4;
const TIME: usize = 6;
const DIM: usize = 8;
const VOCAB: usize = 5;
const SAMPLES: usize = 32;

fn emit(g: &mut Graph, name: &str, op: impl Into<pock::engine::Op>, inputs: &[TensorId]) -> TensorId {
    g.emit(name, op, inputs, Phase::Forward, Program::Train).unwrap()[0]
}

/// `logits[b, t] = mask[b, t] * embed[ids[b, t]] @ head`: each position predicts from its own
/// token, so the labels below (a function of the token) can be learnt.
fn plan(dir: &Path) -> std::path::PathBuf {
    let mut g = Graph::new();
    let ids = g.input("input_ids", vec![BATCH, TIME], DType::I64, Role::Input);
    let mask = g.input("attention_mask", vec![BATCH, TIME], DType::I64, Role::Input);
    let table =
        g.parameter("embed.weight", vec![VOCAB, DIM], (0..VOCAB * DIM).map(|i| ((i * 37 % 17) as f32 / 17.0 - 0.5) * 0.2).collect());
    let head = g.parameter("head.weight", vec![DIM, VOCAB], (0..DIM * VOCAB).map(|i| ((i * 53 % 19) as f32 / 19.0 - 0.5) * 0.2).collect());
    let emb = emit(&mut g, "embed", MoveOp::Gather { axis: 0 }, &[table, ids]);
    let m = emit(&mut g, "mask.float", CastOp::Cast { to: DType::F32 }, &[mask]);
    let m = emit(&mut g, "mask.unsqueeze", DenseOp::Reshape { shape: vec![BATCH, TIME, 1] }, &[m]);
    let h = emit(&mut g, "masked", BroadcastOp::Mul, &[emb, m]);
    let output = emit(&mut g, "logits", MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: false }), &[h, head]);
    let f = ForwardGraph {
        name: "lm".into(),
        graph: g,
        inputs: vec![ids, mask],
        output,
        task: Task::CrossEntropy { classes: VOCAB, ignore_index: -100 },
    };
    let bytes =
        f.into_training(CompileOptions { learning_rate: 0.5, ..CompileOptions::default() }).unwrap().into_plan().unwrap().to_bytes();
    let path = dir.join("lm.pock");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Ids vary per sample; the label of a position is `(id + 1) % VOCAB`, -100 where the mask is 0
/// (the last position of every third sample) and at every fifth position.
fn write_data(path: &Path, with_mask: bool) {
    let ids = Array2::from_shape_fn((SAMPLES, TIME), |(n, t)| ((n * 7 + t * 3) % VOCAB) as i64);
    let mask = Array2::from_shape_fn((SAMPLES, TIME), |(n, t)| i64::from(!(n % 3 == 0 && t == TIME - 1)));
    let y = Array2::from_shape_fn((SAMPLES, TIME), |(n, t)| {
        if mask[(n, t)] == 0 || (n * TIME + t) % 5 == 4 {
            -100
        } else {
            (ids[(n, t)] + 1) % VOCAB as i64
        }
    });
    let mut npz = NpzWriter::new(std::fs::File::create(path).unwrap());
    npz.add_array("input_ids", &ids).unwrap();
    if with_mask {
        npz.add_array("attention_mask", &mask).unwrap();
    }
    npz.add_array("y", &y).unwrap();
    npz.finish().unwrap();
}

#[test]
fn train_eval_and_infer_read_one_array_per_input() {
    let dir = workdir("lm");
    let plan = plan(&dir);
    let data = dir.join("train.npz");
    write_data(&data, true);

    let out = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "6", "--seed", "3", "-q", "--log-json", s(&dir.join("log.jsonl"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let losses: Vec<f64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 6 * SAMPLES / BATCH);
    // The labels depend on each sample's own ids, so the loss falls only if the shuffled batches
    // keep every sample's arrays together.
    let first: f64 = losses[..8].iter().sum::<f64>() / 8.0;
    let last: f64 = losses[losses.len() - 8..].iter().sum::<f64>() / 8.0;
    assert!(last < 0.5 * first, "the loss falls: first epoch {first}, last {last}");

    let ckpt = dir.join("lm.ckpt.safetensors");
    let out = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "-q", "--save", s(&ckpt)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pock(&["eval", s(&plan), "--weights", s(&ckpt), "--data", s(&data), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["samples"], SAMPLES);
    assert!(report["loss"].as_f64().unwrap().is_finite());

    let pred = dir.join("pred.npz");
    let out = pock(&["infer", s(&plan), "--weights", s(&ckpt), "--data", s(&data), "--out", s(&pred)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&pred).unwrap()).unwrap();
    let y: ArrayD<f32> = npz.by_name("y").unwrap();
    assert_eq!(y.shape(), [SAMPLES, TIME, VOCAB]);
}

#[test]
fn a_missing_input_array_is_named_with_what_the_file_holds() {
    let dir = workdir("lm-missing");
    let plan = plan(&dir);
    let data = dir.join("no-mask.npz");
    write_data(&data, false);
    let err = fails(&["train", s(&plan), "--data", s(&data), "--epochs", "1"]);
    assert!(err.contains("no array 'attention_mask'") && err.contains("arrays found: input_ids, y"), "{err}");
}

#[test]
fn the_dataset_reads_named_inputs_and_position_labels() {
    let dir = workdir("lm-dataset");
    let data = dir.join("d.npz");
    write_data(&data, true);
    let spec = |name: &str| pock::data::InputSpec { name: name.into(), dtype: DType::I64, sample_shape: vec![TIME] };
    let d = Dataset::load_npz_inputs(&data, &[spec("input_ids"), spec("attention_mask")]).unwrap();
    assert_eq!(d.len(), SAMPLES);
    let names: Vec<&str> = d.inputs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask"]);
    let Some(Targets::PositionLabels { shape, data: labels }) = &d.y else { panic!("{:?}", d.y) };
    assert_eq!(shape, &[SAMPLES, TIME]);
    assert_eq!(labels[4], -100);
    // A float array where the plan wants int64 ids is refused with the fix.
    let floats = pock::data::InputSpec { name: "input_ids".into(), dtype: DType::F32, sample_shape: vec![TIME] };
    let e = Dataset::load_npz_inputs(&data, &[floats]).unwrap_err().to_string();
    assert!(e.contains("input_ids") && e.contains("int64") && e.contains("float32"), "{e}");
}
