//! Checkpoints: exact state, all-or-nothing restore, the plan's identity, non-finite values and
//! non-float tensors (findings of issue 6).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pock::compiler::CompileOptions;
use pock::engine::plan::{DType, Init, Location, OptimizerKind, Role, TensorInfo};
use pock::engine::{Session, SessionOptions, Targets};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

const OPTS: SessionOptions =
    SessionOptions { threads: 1, reference_kernels: false, backend: pock_engine::session::BackendChoice::Cpu, loss_every: 1 };

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pock-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sgd(momentum: f32) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.05,
        ..Default::default()
    }
}

fn plan_bytes(batch: usize, options: CompileOptions) -> Vec<u8> {
    pock::compile_model("zoo:mlp:inputs=4,hidden=8,classes=3", batch, 0, options).unwrap().to_bytes()
}

/// A session that has taken a few steps, so its state differs from the plan's initial one.
fn trained(bytes: &[u8], steps: usize) -> Session {
    let mut s = Session::from_bytes(bytes, OPTS).unwrap();
    let batch = s.batch();
    let data = pock::synth::blobs(batch, 4, 3, 3);
    let idx: Vec<usize> = (0..batch).collect();
    let (mut x, mut y) = (vec![0.0; batch * 4], vec![0; batch]);
    data.gather_x(&idx, &mut x);
    data.gather_labels(&idx, &mut y);
    s.set_learning_rate(0.001);
    for _ in 0..steps {
        s.train_step(&x, Targets::Labels(&y)).unwrap();
    }
    s
}

/// Every checkpointed value of a session, by name, with its counters.
fn state(s: &Session) -> (Vec<(String, Vec<u32>)>, u64, u64, u32) {
    let names: Vec<String> =
        s.plan().tensors.iter().filter(|t| t.role.is_checkpointed() && t.dtype == DType::F32).map(|t| t.name.clone()).collect();
    let values = names.iter().map(|n| (n.clone(), s.read_tensor(n).unwrap().iter().map(|v| v.to_bits()).collect())).collect();
    (values, s.micro_steps(), s.optimizer_steps(), s.learning_rate().to_bits())
}

/// A checkpoint's tensors as plain data: name, dtype, shape, bytes.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;
/// An edit of a checkpoint's tensors and metadata.
type Edit = Box<dyn FnOnce(&mut Tensors, &mut HashMap<String, String>)>;

/// Rewrites a checkpoint through `edit`, which may change, drop or add tensors.
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) {
    let bytes = std::fs::read(from).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut tensors: Tensors = st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(to, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn resume_restores_the_learning_rate_in_force() {
    let d = dir("lr");
    let bytes = plan_bytes(8, sgd(0.9));
    let s = trained(&bytes, 3);
    s.save(&d.join("c.safetensors")).unwrap();
    let mut again = Session::from_bytes(&bytes, OPTS).unwrap();
    assert_eq!(again.learning_rate(), 0.05, "the plan's default before resuming");
    again.resume(&d.join("c.safetensors")).unwrap();
    assert_eq!(again.learning_rate(), 0.001);
    assert_eq!(state(&again), state(&s));
}

#[test]
fn a_failed_resume_leaves_the_session_untouched() {
    let d = dir("atomic");
    let bytes = plan_bytes(8, sgd(0.9));
    let good = d.join("good.safetensors");
    trained(&bytes, 5).save(&good).unwrap();
    let target = trained(&bytes, 2);
    let before = state(&target);
    let mut target = target;

    // The last tensor (in name order) is the one a tensor-by-tensor restore would reach last.
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing",
            Box::new(|t, _| {
                t.pop();
            }),
            "is missing",
        ),
        (
            "shape",
            Box::new(|t, _| {
                let last = t.last_mut().unwrap();
                last.2 = vec![last.3.len() / 4];
            }),
            "the plan has",
        ),
        (
            "nan",
            Box::new(|t, _| {
                let last = t.last_mut().unwrap();
                last.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "NaN",
        ),
        (
            "inf",
            Box::new(|t, _| {
                let last = t.last_mut().unwrap();
                last.3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
            }),
            "infinite",
        ),
        (
            "lr",
            Box::new(|_, m| {
                m.insert("learning_rate".into(), "NaN".into());
            }),
            "learning rate is NaN",
        ),
        (
            "counter",
            Box::new(|_, m| {
                m.remove("micro_steps");
            }),
            "micro_steps",
        ),
    ];
    for (name, edit, needle) in cases {
        let bad = d.join(format!("{name}.safetensors"));
        rewrite(&good, &bad, edit);
        let e = target.resume(&bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
        assert_eq!(state(&target), before, "{name}: a failed resume changed the session");
    }
    // The same session still resumes from the good checkpoint afterwards.
    target.resume(&good).unwrap();
    assert_eq!(target.micro_steps(), 5);
}

#[test]
fn a_nan_tensor_is_named_with_its_tensor() {
    let d = dir("nan");
    let bytes = plan_bytes(8, sgd(0.0));
    let good = d.join("good.safetensors");
    trained(&bytes, 1).save(&good).unwrap();
    let bad = d.join("bad.safetensors");
    let mut poisoned = String::new();
    rewrite(&good, &bad, |t, _| {
        let first = &mut t[0];
        poisoned = first.0.clone();
        first.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let mut s = Session::from_bytes(&bytes, OPTS).unwrap();
    let e = s.resume(&bad).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains(&poisoned) && e.contains("element 1") && e.contains("earlier checkpoint"), "{e}");
    // --weights refuses it too: evaluating NaN weights would only print NaN.
    let e = s.load_weights(&bad).unwrap_err().to_string();
    assert!(e.contains("NaN"), "{e}");
}

#[test]
fn resuming_into_another_plan_names_the_difference() {
    let d = dir("other");
    let ckpt = d.join("c.safetensors");
    trained(&plan_bytes(8, sgd(0.9)), 1).save(&ckpt).unwrap();
    let adam =
        CompileOptions { optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }, ..Default::default() };
    for (bytes, needles) in [
        (plan_bytes(16, sgd(0.9)), vec!["batch: checkpoint 8, this plan 16"]),
        (plan_bytes(8, adam), vec!["optimizer: checkpoint SGD (momentum 0.9", "this plan Adam"]),
        (plan_bytes(8, CompileOptions { accumulate: 2, ..sgd(0.9) }), vec!["accumulate: checkpoint 1, this plan 2"]),
    ] {
        let mut s = Session::from_bytes(&bytes, OPTS).unwrap();
        let before = state(&s);
        let e = s.resume(&ckpt).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{n}: {e}");
        }
        assert!(e.contains("different plan"), "{e}");
        assert_eq!(state(&s), before);
    }
    // The same model recompiled with another default learning rate is the same plan.
    let mut s = Session::from_bytes(&plan_bytes(8, CompileOptions { learning_rate: 0.5, ..sgd(0.9) }), OPTS).unwrap();
    s.resume(&ckpt).unwrap();
    // Another structure with the same settings is told apart by the identity hash.
    let wider = pock::compile_model("zoo:mlp:inputs=4,hidden=9,classes=3", 8, 0, sgd(0.9)).unwrap().to_bytes();
    let e = Session::from_bytes(&wider, OPTS).unwrap().resume(&ckpt).unwrap_err().to_string();
    assert!(e.contains("different plan"), "{e}");
}

#[test]
fn an_int64_tensor_checkpoints_and_restores() {
    // No zoo model keeps an int64 tensor between steps yet, so add one to a real plan: a
    // persistent counter after the persistent prefix, with everything after it moved along.
    let compiled = pock::compile_model("zoo:mlp:inputs=4,hidden=8,classes=3", 8, 0, sgd(0.9)).unwrap();
    let bytes = compiled.to_bytes();
    let (plan, range) = pock::engine::decode_plan(&bytes).unwrap();
    let mut plan = plan.into_plan();
    let weights = bytes[range.offset..range.offset + range.len].to_vec();
    let at = plan.persistent_bytes;
    let shift = 64;
    for t in &mut plan.tensors {
        if let Location::Arena { offset } = &mut t.location {
            if *offset >= at {
                *offset += shift;
            }
        }
    }
    for program in
        [&mut plan.programs.train, &mut plan.programs.eval, &mut plan.programs.infer].into_iter().chain(plan.programs.apply.as_mut())
    {
        for n in &mut program.nodes {
            if let Some(w) = &mut n.workspace {
                if w.offset >= at {
                    w.offset += shift;
                }
            }
        }
    }
    plan.persistent_bytes += shift;
    plan.arena_bytes += shift;
    plan.tensors.push(TensorInfo {
        name: "sample_counter".into(),
        shape: vec![3],
        dtype: DType::I64,
        role: Role::RunningStat,
        location: Location::Arena { offset: at },
        init: Init::None,
    });
    let edited = pock::engine::encode_plan(&plan, &weights);
    let d = dir("i64");
    let s = trained(&edited, 2);
    s.save(&d.join("c.safetensors")).unwrap();
    let mut again = Session::from_bytes(&edited, OPTS).unwrap();
    again.resume(&d.join("c.safetensors")).unwrap();
    assert_eq!(state(&again), state(&s));
    again.save(&d.join("again.safetensors")).unwrap();
    let counter = |file: &str| {
        let bytes = std::fs::read(d.join(file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("sample_counter").unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[3usize][..]));
        t.data().to_vec()
    };
    assert_eq!(counter("c.safetensors"), counter("again.safetensors"));
}

#[test]
fn checkpoints_from_before_the_plan_identity_load_as_weights_only() {
    let d = dir("old");
    let bytes = plan_bytes(8, sgd(0.0));
    let new = d.join("new.safetensors");
    trained(&bytes, 1).save(&new).unwrap();
    let old = d.join("old.safetensors");
    rewrite(&new, &old, |_, m| {
        m.insert("format".into(), "pock-checkpoint-1".into());
        m.remove("plan_id");
    });
    let mut s = Session::from_bytes(&bytes, OPTS).unwrap();
    let e = s.resume(&old).unwrap_err().to_string();
    assert!(e.contains("older pock") && e.contains("--weights"), "{e}");
    s.load_weights(&old).unwrap();
}

#[test]
fn a_plan_whose_input_has_no_batch_axis_is_an_error_not_a_panic() {
    let bytes = plan_bytes(8, sgd(0.0));
    let (plan, range) = pock::engine::decode_plan(&bytes).unwrap();
    let mut plan = plan.into_plan();
    let weights = bytes[range.offset..range.offset + range.len].to_vec();
    for program in [&plan.programs.train.clone(), &plan.programs.eval.clone()] {
        let input = program.feeds[0];
        plan.tensors[input.index()].shape = vec![];
    }
    let edited = pock::engine::encode_plan(&plan, &weights);
    let e = Session::from_bytes(&edited, OPTS).err().expect("a rank-0 input is refused");
    assert!(!e.to_string().is_empty());
}
