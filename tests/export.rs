//! `pock export`: a model trained by pock written back as ONNX (the source graph with the trained
//! initializers) and as safetensors, checked by importing the export again and by reading the
//! weights back; and the refusals (no ONNX source, a changed source, a missing source).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::onnx_fixture::{dims, float_rule, materialise, read_json};
use common::{fails, pock, s, workdir};
use pock::compiler::onnx::{load_model, Attribute, ImportOptions, ShapeOverrides};
use pock::compiler::stages::BatchNormMode;
use pock::compiler::CompileOptions;
use pock::engine::plan::Role;
use pock::engine::{Session, SessionOptions, Targets};
use safetensors::SafeTensors;

/// A plan compiled by the CLI from a TorchScript fixture (resnet18 or mobilenet_v2) and trained 3
/// SGD-momentum steps on the parity batch, with its checkpoint saved.
struct Trained {
    /// Removed when the test passes (it holds about 45 MB of regenerated weights).
    dir: PathBuf,
    model: PathBuf,
    plan: PathBuf,
    ckpt: PathBuf,
    session: Session,
    x: Vec<f32>,
}

const SPEC: &str = "x=2x3x64x64";

fn trained(name: &str) -> Trained {
    trained_model("resnet18", name, "train")
}

/// `batch_norm` is the `--batch-norm` mode: the bit-exact checks here use `train`; a folded plan
/// (`fold`) exports unfolded values (tests/fold.rs), which onnxruntime checks too.
fn trained_model(fixture: &str, name: &str, batch_norm: &str) -> Trained {
    let dir = workdir(name);
    let model = materialise(&format!("{fixture}.ts"), &dir);
    let (plan, ckpt) = (dir.join("r.pock"), dir.join("r.ckpt.safetensors"));
    let args = ["--input-shape", SPEC, "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--batch-norm", batch_norm];
    let out = pock(&[&["compile", s(&model), "-o", s(&plan)][..], &args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = read_json(&format!("{fixture}.parity.json"));
    let input = &reference["inputs"]["x"];
    let x = float_rule(&input["rule"]).generate(input["key"].as_str().unwrap(), dims(&input["shape"]).iter().product());
    let labels: Vec<i64> = reference["labels"]["values"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut session = Session::load(&plan, SessionOptions::default()).unwrap();
    for _ in 0..3 {
        session.train_step(&x, Targets::Labels(&labels)).unwrap();
    }
    session.save(&ckpt).unwrap();
    Trained { dir, model, plan, ckpt, session, x }
}

fn infer(session: &mut Session, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; session.output_shape().iter().product()];
    session.infer(x, &mut y).unwrap();
    y
}

/// Compiles an ONNX file with the fixture's input shape and loads it.
fn compile(model: &Path) -> Session {
    let import = ImportOptions { shapes: ShapeOverrides::parse(None, &[SPEC]).unwrap(), ..Default::default() };
    let options = CompileOptions { batch_norm: BatchNormMode::Train, ..Default::default() };
    let (compiled, _) = pock::compile_onnx(model, &import, options).unwrap();
    Session::from_bytes(&compiled.to_bytes(), SessionOptions::default()).unwrap()
}

/// The names of the plan's parameters and running statistics.
fn trained_names(session: &Session) -> HashSet<String> {
    session
        .plan()
        .tensors
        .iter()
        .filter(|t| matches!(t.role, Role::Parameter { trainable: true } | Role::RunningStat))
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn exported_onnx_reimports_with_the_trained_outputs_and_keeps_everything_else() {
    let mut t = trained("reimport");
    let want = infer(&mut t.session, &t.x);
    let untrained = infer(&mut compile(&t.model), &t.x);
    assert_ne!(want, untrained, "training changed nothing, so this test could not tell an export of the initial weights apart");

    let source = load_model(&t.model).unwrap();
    let names = trained_names(&t.session);
    for inference in [false, true] {
        let out = t.dir.join(if inference { "inference.onnx" } else { "train.onnx" });
        let mut args = vec!["export", s(&t.plan), "--weights", s(&t.ckpt), "--onnx", s(&out)];
        if inference {
            args.push("--inference");
        }
        let o = pock(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains(&format!("{} trained initializers", names.len())), "{stdout}");

        // The export is one file: external data inlined, so it loads from a directory with
        // nothing else in it.
        let alone = t.dir.join(format!("alone-{inference}"));
        std::fs::create_dir_all(&alone).unwrap();
        let moved = alone.join("m.onnx");
        std::fs::copy(&out, &moved).unwrap();
        let got = infer(&mut compile(&moved), &t.x);
        assert_eq!(got, want, "inference={inference}: the re-imported export infers differently from the trained session");

        let exported = load_model(&moved).unwrap();
        assert_eq!(exported.initializers.len(), source.initializers.len());
        for (e, s0) in exported.initializers.iter().zip(&source.initializers) {
            assert_eq!((&e.name, &e.dims), (&s0.name, &s0.dims));
            if names.contains(&e.name) {
                let trained = t.session.read_tensor(&e.name).unwrap();
                assert_eq!(e.values, pock::compiler::onnx::TensorValues::F32(trained), "initializer '{}'", e.name);
            } else {
                assert_eq!(e.values, s0.values, "initializer '{}' changed although training does not change it", e.name);
            }
        }
        assert_eq!((&exported.inputs, &exported.outputs, exported.opset), (&source.inputs, &source.outputs, source.opset));
        if inference {
            let bns: Vec<_> = exported.nodes.iter().filter(|n| n.op_type == "BatchNormalization").collect();
            assert!(!bns.is_empty());
            for n in bns {
                assert_eq!(n.outputs.len(), 1, "{}", n.name);
                assert_eq!(n.attribute("training_mode"), Some(&Attribute::Int(0)), "{}", n.name);
            }
        } else {
            assert_eq!(exported.nodes, source.nodes, "the training-mode export must keep every node as it was");
        }
    }
    let _ = std::fs::remove_dir_all(&t.dir);
}

#[test]
fn safetensors_export_holds_the_trained_weights_under_their_names() {
    let t = trained("safetensors");
    let out = t.dir.join("w.safetensors");
    let o = pock(&["export", s(&t.plan), "--weights", s(&t.ckpt), "--safetensors", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_safetensors(&t.session, &out);

    // A zoo plan, with its initial weights: the names are the zoo's.
    let dir = workdir("safetensors-zoo");
    let plan = dir.join("mlp.pock");
    let o = pock(&["compile", "zoo:mlp:inputs=4,classes=3", "--batch", "2", "-o", s(&plan)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("mlp.safetensors");
    let o = pock(&["export", s(&plan), "--safetensors", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_safetensors(&Session::load(&plan, SessionOptions::default()).unwrap(), &out);
    let _ = std::fs::remove_dir_all(&t.dir);
}

/// Every parameter and running statistic of the session is in the file with its shape and values,
/// and nothing else is.
fn check_safetensors(session: &Session, path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<_> = session.plan().tensors.iter().filter(|t| matches!(t.role, Role::Parameter { .. } | Role::RunningStat)).collect();
    assert!(!want.is_empty());
    assert_eq!(st.len(), want.len(), "tensors in {}: {:?}", path.display(), st.names());
    for t in want {
        let view = st.tensor(&t.name).unwrap_or_else(|_| panic!("'{}' is missing", t.name));
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        assert_eq!(view.shape(), t.shape.as_slice(), "{}", t.name);
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, session.read_tensor(&t.name).unwrap(), "{}", t.name);
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], pock::export::WEIGHTS_FORMAT);
}

#[test]
fn export_refuses_a_zoo_plan_a_changed_source_and_a_missing_source() {
    let dir = workdir("refusals");
    let zoo = dir.join("cnn.pock");
    let o = pock(&["compile", "zoo:mlp:inputs=4,classes=3", "--batch", "2", "-o", s(&zoo)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("out.onnx");
    let err = fails(&["export", s(&zoo), "--onnx", s(&out), "--safetensors", s(&dir.join("w.safetensors"))]);
    assert!(err.contains("zoo:mlp:inputs=4,classes=3") && err.contains("no ONNX graph") && err.contains("--safetensors"), "{err}");
    assert!(!dir.join("w.safetensors").exists(), "nothing may be written when the export is refused");
    let err = fails(&["export", s(&zoo)]);
    assert!(err.contains("--onnx") && err.contains("--safetensors"), "{err}");

    let t = trained("refusals-onnx");
    // Another model given as the source: refused, naming both files.
    let other = dir.join("other.onnx");
    std::fs::copy(common::onnx_fixture::fixtures_dir().join("mobilenet_v2.ts.onnx"), &other).unwrap();
    let err = fails(&["export", s(&t.plan), "--weights", s(&t.ckpt), "--onnx", s(&out), "--model", s(&other)]);
    assert!(err.contains(s(&other)) && err.contains(s(&t.model)) && err.contains("not the ONNX model"), "{err}");
    assert!(!out.exists());
    // Writing over the source model is refused.
    let err = fails(&["export", s(&t.plan), "--onnx", s(&t.model)]);
    assert!(err.contains("source model"), "{err}");

    // The source moved away: refused with what to do; with --model pointing at it, exported.
    let moved = t.dir.join("moved.onnx");
    std::fs::rename(&t.model, &moved).unwrap();
    let err = fails(&["export", s(&t.plan), "--weights", s(&t.ckpt), "--onnx", s(&out)]);
    assert!(err.contains(s(&t.model)) && err.contains("--model"), "{err}");
    let o = pock(&["export", s(&t.plan), "--weights", s(&t.ckpt), "--onnx", s(&out), "--model", s(&moved)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());
    let _ = std::fs::remove_dir_all(&t.dir);
}

/// onnxruntime runs what `pock export --inference` writes and gives pock's own `infer` outputs
/// (`tests/onnx/check_export.py` compares, within 1e-4), for resnet18 and mobilenet_v2
/// (BatchNormalization, and a Dropout in training mode), each compiled with training-mode
/// BatchNorm and with BatchNorm folded into the convs (the export unfolds it): each trained 3
/// steps and exported for inference as `DIR/MODEL-MODE/model.onnx`, with 8 input samples as
/// `DIR/MODEL-MODE/data.npz` and pock's `infer` outputs for them as `DIR/MODEL-MODE/infer.npz`.
/// Needs onnxruntime and numpy in `$POCK_PYTHON` (default `python3`); without them the test says
/// SKIP on its output, and fails where `CI` is set, so CI cannot pass it silently.
#[test]
fn onnxruntime_runs_the_export() {
    let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_ort = std::process::Command::new(&python).args(["-c", "import onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success());
    if !has_ort {
        let what = format!("onnxruntime and numpy are not importable by {python}: run `{python} -m pip install onnxruntime numpy`, or set POCK_PYTHON to a python that has them");
        assert!(std::env::var_os("CI").is_none(), "{what}");
        println!("SKIP: onnxruntime check of pock export: {what}");
        return;
    }
    let root = workdir("onnxruntime-check");
    for (fixture, batch_norm) in [("resnet18", "train"), ("mobilenet_v2", "train"), ("resnet18", "fold"), ("mobilenet_v2", "fold")] {
        let dir = root.join(format!("{fixture}-{batch_norm}"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = trained_model(fixture, &format!("onnxruntime-check-{fixture}-{batch_norm}"), batch_norm);
        let model = dir.join("model.onnx");
        let o = pock(&["export", s(&t.plan), "--weights", s(&t.ckpt), "--onnx", s(&model), "--inference"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let n = 8;
        let mut x = t.x.clone();
        x.extend(pock::compiler::onnx::weights::FloatRule::Uniform { bound: 1.0 }.generate("export:x", (n - 2) * 3 * 64 * 64));
        let data = dir.join("data.npz");
        pock::data::Dataset { x, x_shape: vec![n, 3, 64, 64], y: None, inputs: Vec::new() }.save_npz(&data).unwrap();
        let o = pock(&["infer", s(&t.plan), "--weights", s(&t.ckpt), "--data", s(&data), "--out", s(&dir.join("infer.npz"))]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let _ = std::fs::remove_dir_all(&t.dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/check_export.py");
    let o = std::process::Command::new(&python).arg(&script).arg(&root).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    print!("{stdout}");
    assert!(o.status.success(), "onnxruntime disagrees with pock's infer:\n{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout.matches("largest difference").count(), 8, "4 models, 2 onnxruntime optimisation levels each:\n{stdout}");
    let _ = std::fs::remove_dir_all(&root);
}

/// The dynamo exporter stores equal initializers once, so a fresh BatchNormalization's running
/// mean and variance can be the very initializers of its bias and scale. The importer gives each
/// statistic its own tensor (`bn.running_mean`, `bn.running_var`, after the scale's name) and
/// the export writes them as initializers of their own that the node reads, next to the trained
/// bias and scale; the re-imported export infers as the trained session does. The model is
/// written by onnx.helper through `$POCK_PYTHON` (the test says SKIP without onnx, and fails
/// where `CI` is set).
#[test]
fn running_statistics_sharing_an_initializer_export_as_initializers_of_their_own() {
    let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
    if !std::process::Command::new(&python).args(["-c", "import onnx, numpy"]).output().is_ok_and(|o| o.status.success()) {
        let what = format!("onnx and numpy are not importable by {python}: set POCK_PYTHON to a python that has them");
        assert!(std::env::var_os("CI").is_none(), "{what}");
        println!("SKIP: shared running statistics export: {what}");
        return;
    }
    let dir = workdir("shared-stats");
    let model = dir.join("m.onnx");
    let script = r#"
import sys, numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(7)
init = lambda n, v: numpy_helper.from_array(np.asarray(v, np.float32), n)
nodes = [
    helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.bias", "bn.weight"], ["b"]),
    helper.make_node("Relu", ["b"], ["r"]),
    helper.make_node("GlobalAveragePool", ["r"], ["g"]),
    helper.make_node("Flatten", ["g"], ["f"]),
    helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1),
]
inits = [init("conv.weight", rng.normal(0, 0.5, (4, 3, 3, 3))), init("bn.weight", np.ones(4)), init("bn.bias", np.zeros(4)),
         init("fc.weight", rng.normal(0, 0.5, (3, 4))), init("fc.bias", np.zeros(3))]
graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], initializer=inits)
m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])
"#;
    let o = std::process::Command::new(&python).args(["-c", script, s(&model)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (plan, ckpt, out) = (dir.join("p.pock"), dir.join("p.ckpt.safetensors"), dir.join("out.onnx"));
    let o = pock(&["compile", s(&model), "-o", s(&plan), "--batch-norm", "train", "--optimizer", "sgd", "--lr", "0.1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut session = Session::load(&plan, SessionOptions::default()).unwrap();
    let x: Vec<f32> = (0..2 * 3 * 6 * 6).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    for _ in 0..2 {
        session.train_step(&x, Targets::Labels(&[0, 2])).unwrap();
    }
    session.save(&ckpt).unwrap();
    let (mean, bias) = (session.read_tensor("bn.running_mean").unwrap(), session.read_tensor("bn.bias").unwrap());
    assert_ne!(mean, bias, "the running mean and the bias must have diverged for this test to tell them apart");
    let o = pock(&["export", s(&plan), "--weights", s(&ckpt), "--onnx", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let exported = load_model(&out).unwrap();
    let bn = exported.nodes.iter().find(|n| n.op_type == "BatchNormalization").unwrap();
    assert_eq!(bn.inputs[1..], ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]);
    for name in ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "conv.weight"] {
        let t = exported.initializers.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer '{name}'"));
        assert_eq!(t.values, pock::compiler::onnx::TensorValues::F32(session.read_tensor(name).unwrap()), "initializer '{name}'");
    }
    let want = infer(&mut session, &x);
    let import = ImportOptions::default();
    let options = CompileOptions { batch_norm: BatchNormMode::Train, ..Default::default() };
    let (compiled, _) = pock::compile_onnx(&out, &import, options).unwrap();
    let mut again = Session::from_bytes(&compiled.to_bytes(), SessionOptions::default()).unwrap();
    assert_eq!(infer(&mut again, &x), want, "the re-imported export infers differently from the trained session");
    let _ = std::fs::remove_dir_all(&dir);
}
