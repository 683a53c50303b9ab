//! Damaged plan and checkpoint files give errors, never panics.

use pock::compiler::CompileOptions;
use pock::engine::format::{decode_plan, encode_plan, FormatError};
use pock::engine::plan::{Location, Plan};
use pock::engine::{Session, SessionError, SessionOptions, Targets};

fn compiled() -> (Plan, Vec<u8>, Vec<u8>) {
    let c = pock::compile_model("zoo:mlp:inputs=4,hidden=8,classes=3", 4, 0, CompileOptions::default()).unwrap();
    let bytes = c.to_bytes();
    (c.plan, c.weights, bytes)
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pock-files-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn valid_plan_round_trips() {
    let (plan, _, bytes) = compiled();
    let (decoded, range) = decode_plan(&bytes).unwrap();
    assert_eq!(decoded, plan);
    assert_eq!(range.len as u64, plan.weight_bytes);
    assert_eq!(range.offset % 64, 0);
}

#[test]
fn truncated_plans_are_errors() {
    let (_, _, bytes) = compiled();
    for len in [0, 5, 8, 20, 31, 32, 40, bytes.len() / 2, bytes.len() - 1] {
        let e = decode_plan(&bytes[..len]).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { .. } | FormatError::Checksum { .. }), "length {len}: {e}");
    }
    let e = decode_plan(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn corrupted_plans_are_errors() {
    let (_, _, bytes) = compiled();
    // Every single-byte flip after the header is caught (by the checksum or the decoder).
    for at in (32..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        assert!(decode_plan(&b).is_err(), "flip at {at} was not detected");
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(decode_plan(&b).unwrap_err(), FormatError::BadMagic));
    let mut b = bytes.clone();
    b[8] = 99;
    let e = decode_plan(&b).unwrap_err();
    assert!(matches!(e, FormatError::Version { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("recompile"), "{e}");
    // Random bytes of many lengths.
    let mut state = 0x1234_5678u64;
    for len in [1usize, 32, 100, 1000, 5000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        assert!(decode_plan(&junk).is_err());
        let mut with_magic = junk.clone();
        if len >= 8 {
            with_magic[..8].copy_from_slice(b"POCKPLAN");
            assert!(decode_plan(&with_magic).is_err());
        }
    }
}

#[test]
fn well_formed_but_inconsistent_plans_are_rejected() {
    let (plan, weights, _) = compiled();
    let mut cases: Vec<(&str, Plan)> = Vec::new();
    let mut p = plan.clone();
    p.tensors[0].location = Location::Arena { offset: p.arena_bytes };
    cases.push(("tensor outside arena", p));
    let mut p = plan.clone();
    let arena_tensor = p.tensors.iter().position(|t| matches!(t.location, Location::Arena { .. })).unwrap();
    p.tensors[arena_tensor].location = Location::Arena { offset: 4 };
    cases.push(("misaligned tensor", p));
    let mut p = plan.clone();
    let n = &mut p.programs.train.nodes[0];
    n.inputs.pop();
    cases.push(("wrong arity", p));
    let mut p = plan.clone();
    let out = p.programs.train.nodes[0].outputs[0];
    p.tensors[out.index()].shape.push(2);
    cases.push(("output shape", p));
    let mut p = plan.clone();
    p.programs.train.nodes[0].inputs[0] = pock::engine::TensorId(10_000);
    cases.push(("missing tensor", p));
    let mut p = plan.clone();
    let node = p.programs.train.nodes.iter().position(|n| n.inputs.len() == 2).unwrap();
    let (i0, o0) = (p.programs.train.nodes[node].inputs[0], p.programs.train.nodes[node].outputs[0]);
    p.tensors[o0.index()].location = p.tensors[i0.index()].location;
    cases.push(("output overlapping an input", p));
    for (what, p) in cases {
        let bytes = encode_plan(&p, &weights);
        let e = decode_plan(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::Invalid(_)), "{what}: {e}");
        assert!(matches!(Session::from_bytes(&bytes, SessionOptions::default()), Err(SessionError::Format { .. })), "{what}");
    }
}

#[test]
fn session_load_reports_missing_and_damaged_files() {
    let (_, _, bytes) = compiled();
    let d = dir();
    let missing = d.join("nope.pock");
    let e = Session::load(&missing, SessionOptions::default()).err().unwrap();
    assert!(e.to_string().contains("nope.pock"), "{e}");
    let bad = d.join("bad.pock");
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let e = Session::load(&bad, SessionOptions::default()).err().unwrap();
    assert!(e.to_string().contains("bad.pock") && e.to_string().contains("truncated"), "{e}");
}

#[test]
fn damaged_checkpoints_are_errors() {
    let (_, _, bytes) = compiled();
    let d = dir();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).unwrap();
    let x = vec![0.5f32; 16];
    let y = vec![0i64, 1, 2, 0];
    s.train_step(&x, Targets::Labels(&y)).unwrap();
    let good = d.join("good.safetensors");
    s.save(&good).unwrap();
    let ckpt = std::fs::read(&good).unwrap();
    let fresh = || Session::from_bytes(&bytes, SessionOptions::default()).unwrap();
    assert!(fresh().resume(&good).is_ok());
    for len in [0, 4, 8, 100, ckpt.len() / 2, ckpt.len() - 1] {
        let p = d.join(format!("trunc{len}.safetensors"));
        std::fs::write(&p, &ckpt[..len]).unwrap();
        assert!(fresh().resume(&p).is_err(), "truncated to {len}");
        assert!(fresh().load_weights(&p).is_err(), "truncated to {len}");
    }
    let mut junk = ckpt.clone();
    for b in junk.iter_mut().take(40).skip(8) {
        *b = b'{';
    }
    let p = d.join("junk.safetensors");
    std::fs::write(&p, &junk).unwrap();
    assert!(fresh().resume(&p).is_err());
    // A checkpoint of another model: resuming names the differing setting, loading weights
    // names the tensor that does not fit.
    let other = pock::compile_model("zoo:mlp:inputs=4,hidden=9,classes=3", 4, 0, CompileOptions::default()).unwrap().to_bytes();
    let o = Session::from_bytes(&other, SessionOptions::default()).unwrap();
    let op = d.join("other.safetensors");
    o.save(&op).unwrap();
    let e = fresh().resume(&op).unwrap_err().to_string();
    assert!(e.contains("different plan") && e.contains("hidden=9"), "{e}");
    let e = fresh().load_weights(&op).unwrap_err().to_string();
    assert!(e.contains("does not match") && e.contains("layers."), "{e}");
}
