//! A language-model-shaped graph with two typed data inputs, end to end: token ids (int64)
//! through an embedding Gather, an attention mask (int64, cast to float) scaling the embeddings,
//! and `[batch, time, vocab]` logits trained with cross-entropy over the last axis, ignoring
//! positions labelled -100. The first loss is checked against a float64 reference computed here
//! from the definition; the Session feeds both inputs by name, in any order, allocating nothing
//! per step, and names what is wrong with a batch's inputs.

use pock_compiler::ir::{DType, Graph, Role};
use pock_compiler::{CompileOptions, ForwardGraph, Task};
use pock_engine::ops::{BroadcastOp, CastOp, DenseOp, MatMul, MatMulOp, MoveOp};
use pock_engine::{Input, InputError, Session, SessionError, SessionOptions, Targets};

mod support;
use support::{allocations_during, emit};

#[global_allocator]
static ALLOCATOR: support::Counting = support::Counting;

const BATCH: usize = 2;
const TIME: usize = 5;
const DIM: usize = 3;
const VOCAB: usize = 7;

fn table() -> Vec<f32> {
    (0..VOCAB * DIM).map(|i| (((i * 37 + 11) % 29) as f32 / 29.0 - 0.5) * 1.6).collect()
}

fn head() -> Vec<f32> {
    (0..DIM * VOCAB).map(|i| (((i * 53 + 5) % 31) as f32 / 31.0 - 0.5) * 1.4).collect()
}

/// `input_ids [B, T]`, `attention_mask [B, T]` -> logits `[B, T, V]`:
/// `logits[b, t] = mask[b, t] * table[ids[b, t]] @ head`.
fn model() -> ForwardGraph {
    let mut g = Graph::new();
    let ids = g.input("input_ids", vec![BATCH, TIME], DType::I64, Role::Input);
    let mask = g.input("attention_mask", vec![BATCH, TIME], DType::I64, Role::Input);
    let table = g.parameter("embed.weight", vec![VOCAB, DIM], table());
    let head = g.parameter("head.weight", vec![DIM, VOCAB], head());
    let emb = emit(&mut g, "embed", MoveOp::Gather { axis: 0 }, &[table, ids]);
    let m = emit(&mut g, "mask.float", CastOp::Cast { to: DType::F32 }, &[mask]);
    let m = emit(&mut g, "mask.unsqueeze", DenseOp::Reshape { shape: vec![BATCH, TIME, 1] }, &[m]);
    let h = emit(&mut g, "masked", BroadcastOp::Mul, &[emb, m]);
    let output = emit(&mut g, "logits", MatMulOp::BatchMatMul(MatMul { trans_a: false, trans_b: false }), &[h, head]);
    ForwardGraph {
        name: "two-inputs".into(),
        graph: g,
        inputs: vec![ids, mask],
        output,
        task: Task::CrossEntropy { classes: VOCAB, ignore_index: -100 },
    }
}

struct Batch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
}

/// Labels are -100 where `(b * T + t) % 4 == 3` (as the parity fixtures mark ignored positions),
/// and the second sample's last two positions are masked out.
fn batch() -> Batch {
    let ids = (0..BATCH * TIME).map(|i| ((i * 3 + 1) % VOCAB) as i64).collect();
    let mask = (0..BATCH * TIME).map(|i| i64::from(!(i / TIME == 1 && i % TIME >= TIME - 2))).collect();
    let labels = (0..BATCH * TIME).map(|i| if i % 4 == 3 { -100 } else { ((i * 5 + 2) % VOCAB) as i64 }).collect();
    Batch { ids, mask, labels }
}

/// The mean cross-entropy over labelled positions, in f64, from the definition:
/// `-log(exp(z[label]) / sum_v exp(z[v]))` with `z = mask * table[id] @ head`.
fn reference_loss(b: &Batch) -> f64 {
    let (table, head) = (table(), head());
    let (mut total, mut kept) = (0.0f64, 0usize);
    for p in 0..BATCH * TIME {
        if b.labels[p] == -100 {
            continue;
        }
        let row = &table[b.ids[p] as usize * DIM..][..DIM];
        let z: Vec<f64> =
            (0..VOCAB).map(|v| (0..DIM).map(|d| b.mask[p] as f64 * f64::from(row[d]) * f64::from(head[d * VOCAB + v])).sum()).collect();
        let denominator: f64 = z.iter().map(|v| v.exp()).sum();
        total -= (z[b.labels[p] as usize].exp() / denominator).ln();
        kept += 1;
    }
    total / kept as f64
}

fn session() -> Session {
    let t = model().into_training(CompileOptions { learning_rate: 0.5, ..CompileOptions::default() }).unwrap();
    let bytes = t.into_plan().unwrap().to_bytes();
    Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: true, ..Default::default() }).unwrap()
}

#[test]
fn the_plan_records_each_input_with_its_dtype_and_shape() {
    let s = session();
    let inputs: Vec<(String, DType, Vec<usize>)> = s.inputs().map(|t| (t.name.clone(), t.dtype, t.shape.clone())).collect();
    assert_eq!(
        inputs,
        [("input_ids".to_string(), DType::I64, vec![BATCH, TIME]), ("attention_mask".to_string(), DType::I64, vec![BATCH, TIME])]
    );
    let target = s.plan().tensor(*s.plan().programs.train.feeds.last().unwrap());
    assert_eq!((target.dtype, target.shape.clone()), (DType::I64, vec![BATCH, TIME]), "the labels take the logits' shape without vocab");
}

#[test]
fn trains_through_named_inputs_from_the_reference_loss() {
    let mut s = session();
    let b = batch();
    let inputs = [("input_ids", Input::I64(&b.ids)), ("attention_mask", Input::I64(&b.mask))];
    let first = s.train_step_inputs(&inputs, Targets::Labels(&b.labels)).unwrap();
    let want = reference_loss(&b);
    assert!((f64::from(first) - want).abs() <= 1e-5 * want, "first loss {first}, reference {want}");
    // The order of the named inputs does not matter.
    let reversed = [("attention_mask", Input::I64(&b.mask)), ("input_ids", Input::I64(&b.ids))];
    let mut losses = vec![first];
    for _ in 0..20 {
        losses.push(s.train_step_inputs(&reversed, Targets::Labels(&b.labels)).unwrap());
    }
    assert!(losses[20] < 0.7 * losses[0], "training lowers the loss: {losses:?}");

    // Eval: one mean loss per sample over its labelled positions; infer writes the logits.
    let (mut out, mut per_sample) = (vec![0.0; BATCH * TIME * VOCAB], vec![0.0; BATCH]);
    s.eval_batch_inputs(&inputs, Targets::Labels(&b.labels), &mut out, &mut per_sample).unwrap();
    assert!(per_sample.iter().all(|l| l.is_finite() && *l > 0.0), "{per_sample:?}");
    let mut inferred = vec![0.0; BATCH * TIME * VOCAB];
    s.infer_inputs(&inputs, &mut inferred).unwrap();
    assert_eq!(inferred, out);
    // The masked positions' logits are exactly zero.
    assert!(inferred[(TIME + TIME - 2) * VOCAB..].iter().all(|&v| v == 0.0));
}

#[test]
fn steps_with_named_inputs_allocate_nothing() {
    let mut s = session();
    let b = batch();
    let inputs = [("input_ids", Input::I64(&b.ids)), ("attention_mask", Input::I64(&b.mask))];
    let (mut out, mut losses) = (vec![0.0; BATCH * TIME * VOCAB], vec![0.0; BATCH]);
    s.train_step_inputs(&inputs, Targets::Labels(&b.labels)).unwrap();
    let allocations = allocations_during(|| {
        for _ in 0..3 {
            s.train_step_inputs(&inputs, Targets::Labels(&b.labels)).unwrap();
        }
        s.eval_batch_inputs(&inputs, Targets::Labels(&b.labels), &mut out, &mut losses).unwrap();
        s.infer_inputs(&inputs, &mut out).unwrap();
    });
    assert_eq!(allocations, 0);
}

fn input_error(e: SessionError) -> InputError {
    match e {
        SessionError::Inputs(e) => e,
        other => panic!("expected an input error, got {other}"),
    }
}

#[test]
fn wrong_inputs_are_named() {
    let mut s = session();
    let b = batch();
    let y = Targets::Labels(&b.labels);
    let floats = vec![0.0f32; BATCH * TIME];

    let e = input_error(s.train_step_inputs(&[("input_ids", Input::I64(&b.ids))], y).unwrap_err());
    assert!(matches!(&e, InputError::Missing { name, .. } if name == "attention_mask"), "{e:?}");
    assert!(e.to_string().contains("'attention_mask' (int64 of shape [2, 5]) is missing"), "{e}");

    let extra = [("input_ids", Input::I64(&b.ids)), ("attention_mask", Input::I64(&b.mask)), ("token_type_ids", Input::I64(&b.ids))];
    let e = input_error(s.train_step_inputs(&extra, y).unwrap_err());
    assert!(matches!(&e, InputError::Unknown { name, .. } if name == "token_type_ids"), "{e:?}");
    assert!(e.to_string().contains("'input_ids' (int64 [2, 5]), 'attention_mask' (int64 [2, 5])"), "{e}");

    let twice = [("input_ids", Input::I64(&b.ids)), ("input_ids", Input::I64(&b.ids))];
    assert!(matches!(input_error(s.train_step_inputs(&twice, y).unwrap_err()), InputError::Duplicate { .. }));

    let mistyped = [("input_ids", Input::I64(&b.ids)), ("attention_mask", Input::F32(&floats))];
    let e = input_error(s.train_step_inputs(&mistyped, y).unwrap_err());
    assert_eq!(e, InputError::WrongType { name: "attention_mask".into(), want: "int64", given: "float32", shape: vec![BATCH, TIME] });

    let short = [("input_ids", Input::I64(&b.ids[1..])), ("attention_mask", Input::I64(&b.mask))];
    let e = input_error(s.train_step_inputs(&short, y).unwrap_err());
    assert_eq!(e, InputError::WrongLength { name: "input_ids".into(), shape: vec![BATCH, TIME], expected: 10, given: 9 });

    // The one-input calls refuse a plan with two inputs, saying which to use.
    let e = input_error(s.train_step(&floats, y).unwrap_err());
    assert!(matches!(e, InputError::SeveralInputs { count: 2, .. }) && e.to_string().contains("train_step_inputs"), "{e}");
    // Nothing was trained by the refused calls.
    assert_eq!(s.micro_steps(), 0);
}

#[test]
fn the_labels_ignore_only_minus_100_and_refuse_other_negatives() {
    let mut s = session();
    let b = batch();
    let mut labels = b.labels.clone();
    labels[0] = -1;
    let inputs = [("input_ids", Input::I64(&b.ids)), ("attention_mask", Input::I64(&b.mask))];
    let e = s.train_step_inputs(&inputs, Targets::Labels(&labels)).unwrap_err();
    assert!(e.to_string().contains("label -1 at row 0 is outside [0, 7)"), "{e}");
}
