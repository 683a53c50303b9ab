//! The ONNX ops pock imports by composition of its primitives (PRelu, Mish, Selu, Softsign,
//! GlobalMaxPool, Sum, Mean, ReduceL2, ReduceSumSquare, ReduceLogSumExp, ArgMax,
//! InstanceNormalization, GroupNormalization, Resize, ConvTranspose, IsNaN, IsInf, CumSum,
//! GatherElements, GatherND, DepthToSpace, SpaceToDepth, Einsum, OneHot, ReduceMin, Celu,
//! ThresholdedRelu, Shrink, LpNormalization, MeanVarianceNormalization, Hardmax, and Conv,
//! MaxPool, AveragePool, BatchNormalization and global pooling on volumes, LRN, If on a
//! compile-time condition, Size, ArgMin, ReduceL1 and ReduceLogSum): small models
//! written by
//! `tests/onnx/composite_cases.py` (run with `$POCK_PYTHON`, which needs onnx, onnxruntime and
//! numpy), each with attribute variants, imported forward and run by the f64 interpreter against
//! onnxruntime's outputs (onnx's reference evaluator for GroupNormalization, which onnxruntime's
//! CPU provider lacks). The `grad_*` models' parameter gradients, derived by pock's autodiff
//! through the compositions (ConvTranspose's by the conv family's rule for `Conv2dGradInput`),
//! are checked against central finite differences, and the same models train on the GPU backend
//! as on the CPU. Refused attributes name the op, the node, the attribute and what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pock::compiler::gradcheck::{assert_close, check_model};
use pock::compiler::interp::Interpreter;
use pock::compiler::ir::DType;
use pock::compiler::onnx::{
    import_forward, import_model, load_model_bytes, load_tensor_bytes, Attribute, ImportOptions, LossKind, OnnxModel, OutputValue, Tensor,
    TensorValues,
};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// A directory under the system temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The generated cases' directory (made once per test binary).
fn cases() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    &DIR.get_or_init(|| {
        let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
        let dir = std::env::temp_dir().join(format!("pock-onnx-composite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/composite_cases.py");
        let out = Command::new(&python).arg(&script).arg(&dir).output().unwrap_or_else(|e| panic!("running {python}: {e}"));
        assert!(
            out.status.success(),
            "tests/onnx/composite_cases.py failed (it needs onnx, onnxruntime and numpy: set POCK_PYTHON to a python that has \
             them, e.g. `python3 -m pip install 'onnx==1.23.*' onnxruntime numpy`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        TempDir(dir)
    })
    .0
}

fn load(name: &str) -> (OnnxModel, Vec<Tensor>, Tensor) {
    let dir = cases().join(name);
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = load_model_bytes(&bytes, Some(&dir)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let set = dir.join("test_data_set_0");
    let read = |f: &str| load_tensor_bytes(&std::fs::read(set.join(f)).unwrap()).unwrap();
    let inputs = (0..).map(|k| format!("input_{k}.pb")).take_while(|f| set.join(f).exists()).map(|f| read(&f)).collect();
    (model, inputs, read("output_0.pb"))
}

/// Imports the case forward, runs it in f64 and compares with the recorded output.
fn run_case(name: &str) -> Result<(), String> {
    let (model, inputs, want) = load(name);
    let mut options = ImportOptions::default();
    for t in &inputs {
        options.shapes.shapes.push((t.name.clone(), t.dims.clone()));
    }
    let imported = import_forward(&model, &options).map_err(|e| e.to_string())?;
    let graph = &imported.graph;
    let mut interp = Interpreter::<f64>::new(graph);
    for &id in &imported.inputs {
        let def = graph.tensor(id);
        let t = inputs.iter().find(|t| t.name == def.name).ok_or(format!("no value for '{}'", def.name))?;
        let TensorValues::F32(v) = &t.values else { return Err(format!("input '{}' is not float32", t.name)) };
        interp.set(id, v.iter().map(|&v| f64::from(v)).collect());
    }
    interp.run(&graph.nodes).map_err(|e| e.to_string())?;
    let [(_, OutputValue::Tensor(y))] = imported.outputs.as_slice() else { return Err("one tensor output expected".into()) };
    if graph.shape(*y) != want.dims.as_slice() {
        return Err(format!("shape {:?}, expected {:?}", graph.shape(*y), want.dims));
    }
    match (&want.values, graph.tensor(*y).dtype) {
        (TensorValues::F32(w), DType::F32) => {
            let got = interp.get(*y).ok_or("output not computed")?;
            for (i, (&g, &w)) in got.iter().zip(w).enumerate() {
                let w = f64::from(w);
                if (g - w).abs() > ATOL + RTOL * w.abs() || g.is_nan() {
                    return Err(format!("y[{i}] is {g}, expected {w}"));
                }
            }
        }
        (TensorValues::I64(w), DType::I64) => {
            let got = interp.get_int(*y).ok_or("output not computed")?;
            if got != w.as_slice() {
                return Err(format!("{got:?}, expected {w:?}"));
            }
        }
        (w, d) => return Err(format!("output is {}, expected {}", d.name(), w.dtype())),
    }
    Ok(())
}

fn check_all(prefixes: &[&str], at_least: usize) {
    let mut names: Vec<String> = std::fs::read_dir(cases())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    assert!(names.len() >= at_least, "only {} cases for {prefixes:?}: {names:?}", names.len());
    let failures: Vec<String> = names.iter().filter_map(|n| run_case(n).err().map(|e| format!("{n}: {e}"))).collect();
    assert!(failures.is_empty(), "{} of {} cases differ from onnxruntime:\n{}", failures.len(), names.len(), failures.join("\n"));
}

#[test]
fn activations_and_global_max_pool_match_onnxruntime() {
    check_all(&["prelu_", "mish", "selu_", "softsign", "global_max_pool"], 9);
}

#[test]
fn sum_mean_and_composed_reductions_match_onnxruntime() {
    check_all(&["sum_", "mean_", "reducel2_", "reducesumsquare_", "reducelogsumexp_"], 20);
}

#[test]
fn argmax_matches_onnxruntime_with_ties() {
    check_all(&["argmax_"], 4);
}

#[test]
fn instance_and_group_normalization_match_onnxruntime_and_the_reference() {
    check_all(&["instance_norm", "group_norm_"], 5);
}

#[test]
fn resize_nearest_linear_cubic_match_onnxruntime() {
    check_all(&["resize_"], 15);
}

#[test]
fn conv_transpose_matches_onnxruntime() {
    check_all(&["convtranspose_"], 7);
}

#[test]
fn isnan_isinf_cumsum_gather_elements_gather_nd_match_onnxruntime() {
    check_all(&["isnan", "isinf_", "cumsum_", "gatherelements_", "gathernd_"], 23);
}

#[test]
fn depth_space_einsum_onehot_and_small_ops_match_onnxruntime() {
    check_all(
        &[
            "depthtospace_",
            "spacetodepth",
            "einsum_",
            "onehot_",
            "reducemin_",
            "celu_",
            "thresholdedrelu_",
            "shrink_",
            "lpnorm_",
            "mvn_",
            "hardmax_",
        ],
        55,
    );
}

/// SpaceToDepth's `mode` is opset 28's, which onnxruntime and the checker at pock's opsets lack:
/// SpaceToDepth CRD then DepthToSpace CRD (checked above against onnxruntime) must give the input
/// back exactly, and SpaceToDepth DCR then DepthToSpace CRD must not.
#[test]
fn space_to_depth_crd_is_inverted_by_depth_to_space_crd() {
    use pock::compiler::onnx::Node;
    let roundtrip = |mode: &[u8]| {
        let (mut m, inputs, _) = load("spacetodepth");
        set_attribute(&mut m, "mode", Attribute::String(mode.to_vec()));
        m.nodes[0].outputs = vec!["s".into()];
        let attrs = vec![("blocksize", Attribute::Int(2)), ("mode", Attribute::String(b"CRD".to_vec()))];
        m.nodes.push(Node::new("DepthToSpace", &["s"], &["y"], attrs));
        m.outputs[0].shape = m.inputs[0].shape.clone();
        let mut options = ImportOptions::default();
        options.shapes.shapes.push((inputs[0].name.clone(), inputs[0].dims.clone()));
        let imported = import_forward(&m, &options).unwrap();
        let mut interp = Interpreter::<f64>::new(&imported.graph);
        let TensorValues::F32(x) = &inputs[0].values else { panic!("float input") };
        let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        interp.set(imported.inputs[0], x.clone());
        interp.run(&imported.graph.nodes).unwrap();
        let [(_, OutputValue::Tensor(y))] = imported.outputs.as_slice() else { panic!("one output") };
        (interp.get(*y).unwrap().to_vec(), x)
    };
    let (y, x) = roundtrip(b"CRD");
    assert_eq!(y, x);
    let (y, x) = roundtrip(b"DCR");
    assert_ne!(y, x);
}

fn gradients(name: &str, parameters: &[&str]) {
    let (model, inputs, _) = load(name);
    let mut options = ImportOptions { loss: LossKind::Mse, ..Default::default() };
    options.shapes.shapes.push((inputs[0].name.clone(), inputs[0].dims.clone()));
    let forward = import_model(&model, name, &options).unwrap().forward;
    let checks = check_model(forward, 5, 16, 12, 1e-6).unwrap();
    for p in parameters {
        assert!(checks.iter().any(|c| c.name == *p), "{name}: {p} is checked: {checks:?}");
    }
    assert_close(name, &checks, 1e-6);
}

#[test]
fn lrn_if_size_argmin_reduce_l1_and_log_sum_match_onnxruntime() {
    check_all(&["legacy_"], 7);
    check_all(&["argmin_", "reducel1_", "reducelogsum_"], 13);
}

#[test]
fn lrn_and_reduce_l1_log_sum_gradients_match_finite_differences() {
    gradients("grad_legacy", &["p", "c"]);
}

#[test]
fn volumes_conv3d_pools3d_and_global_pools_match_onnxruntime() {
    check_all(&["vol_"], 15);
}

#[test]
fn conv3d_batchnorm3d_maxpool3d_gradients_match_finite_differences() {
    gradients("grad_volume", &["w1", "s", "bb", "w2", "b2"]);
}

#[test]
fn conv_transpose_instance_norm_prelu_global_max_pool_gradients_match_finite_differences() {
    gradients("grad_convtranspose_norm_prelu", &["w", "s", "b", "slope"]);
    gradients("grad_groupconv_transpose", &["w", "b"]);
}

#[test]
fn resize_group_norm_mish_selu_softsign_gradients_match_finite_differences() {
    gradients("grad_resize_groupnorm_mish", &["p", "s", "b"]);
}

#[test]
fn composed_reduction_gradients_match_finite_differences() {
    gradients("grad_reductions", &["p", "c"]);
}

#[test]
fn cumsum_gather_elements_and_gather_nd_gradients_match_finite_differences() {
    gradients("grad_cumsum_gather_elements", &["p", "q", "t"]);
}

#[test]
fn depth_space_einsum_norms_and_piecewise_gradients_match_finite_differences() {
    gradients("grad_more", &["p", "q", "r", "c"]);
}

fn import_error(model: &OnnxModel) -> String {
    let options = ImportOptions { loss: LossKind::Mse, ..Default::default() };
    match import_model(model, "t", &options) {
        Ok(_) => panic!("the import succeeded"),
        Err(e) => e.to_string(),
    }
}

fn set_attribute(model: &mut OnnxModel, name: &str, value: Attribute) {
    let attrs = &mut model.nodes[0].attributes;
    attrs.retain(|(n, _)| n != name);
    attrs.push((name.to_string(), value));
}

#[test]
fn unsupported_attributes_name_the_op_node_attribute_and_what_to_do() {
    let (mut m, _, _) = load("resize_linear_half_pixel_down");
    m.nodes[0].name = "up1".into();
    set_attribute(&mut m, "coordinate_transformation_mode", Attribute::String(b"tf_crop_and_resize".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("up1") && e.contains("Resize") && e.contains("coordinate_transformation_mode") && e.contains("Slice"), "{e}");

    let (mut m, _, _) = load("resize_nearest_default_up");
    set_attribute(&mut m, "nearest_mode", Attribute::String(b"round_half_even".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("nearest_mode") && e.contains("round_prefer_floor"), "{e}");

    let (mut m, _, _) = load("convtranspose_stride2_kernel2");
    m.nodes[0].name = "deconv".into();
    set_attribute(&mut m, "output_padding", Attribute::Ints(vec![2, 2]));
    let e = import_error(&m);
    assert!(e.contains("deconv") && e.contains("ConvTranspose") && e.contains("output_padding must be smaller than the stride"), "{e}");

    let (mut m, _, _) = load("group_norm_21");
    set_attribute(&mut m, "num_groups", Attribute::Int(3));
    let e = import_error(&m);
    assert!(e.contains("GroupNormalization") && e.contains("num_groups") && e.contains("divide the channels"), "{e}");

    // GroupNormalization-21's per-channel scale in an opset-18 model is refused, not misread.
    let (mut m, _, _) = load("group_norm_21");
    m.opset = 18;
    m.opset_imports = vec![(String::new(), 18)];
    let e = import_error(&m);
    assert!(e.contains("scale") && e.contains("expected [2]"), "{e}");
}

#[test]
fn refused_einsum_depth_to_space_and_lp_norm_attributes_name_the_attribute_and_what_to_do() {
    let (mut m, _, _) = load("einsum_transpose");
    m.nodes[0].name = "ein".into();
    set_attribute(&mut m, "equation", Attribute::String(b"ii->i".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("ein") && e.contains("Einsum") && e.contains("'i' appears twice") && e.contains("diagonal"), "{e}");

    let (mut m, _, _) = load("einsum_bmm");
    let second = m.nodes[0].inputs[1].clone();
    m.nodes[0].inputs.push(second);
    set_attribute(&mut m, "equation", Attribute::String(b"bij,bjk,bkl->bil".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("3 operands") && e.contains("chain of two-operand Einsums"), "{e}");

    let (mut m, _, _) = load("einsum_bmm");
    set_attribute(&mut m, "equation", Attribute::String(b"bij,bjk->bjz".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("output label 'z' is in no operand"), "{e}");

    let (mut m, _, _) = load("depthtospace_crd");
    set_attribute(&mut m, "mode", Attribute::String(b"RCD".to_vec()));
    let e = import_error(&m);
    assert!(e.contains("DepthToSpace") && e.contains("'mode'") && e.contains("DCR and CRD"), "{e}");

    let (mut m, _, _) = load("lpnorm_p2");
    set_attribute(&mut m, "p", Attribute::Int(3));
    let e = import_error(&m);
    assert!(e.contains("LpNormalization") && e.contains("'p' is 3") && e.contains("p 1 and 2"), "{e}");
}

/// The `grad_*` models (every composed op but ArgMax, Hardmax and OneHot, which have no gradient) trained one step
/// (MSE, SGD with momentum) on the GPU backend and on the CPU's reference kernels: the same loss
/// and parameters within 1e-5 of each tensor's RMS. Skipped without a GPU adapter.
#[cfg(feature = "wgpu")]
#[test]
fn composed_ops_train_on_the_gpu_as_on_the_cpu() {
    use pock::engine::session::BackendChoice;
    use pock::engine::{Session, SessionOptions, Targets};
    if !common::gpu_present() {
        return;
    }
    let rms = |v: &[f32]| (v.iter().map(|v| v * v).sum::<f32>() / v.len() as f32).sqrt();
    for case in [
        "grad_convtranspose_norm_prelu",
        "grad_groupconv_transpose",
        "grad_resize_groupnorm_mish",
        "grad_reductions",
        "grad_cumsum_gather_elements",
        "grad_more",
        "grad_volume",
        "grad_legacy",
    ] {
        let (model, inputs, _) = load(case);
        let mut import = ImportOptions { loss: LossKind::Mse, ..Default::default() };
        import.shapes.shapes.push((inputs[0].name.clone(), inputs[0].dims.clone()));
        let options = pock::compiler::CompileOptions { learning_rate: 0.05, ..Default::default() };
        let forward = import_model(&model, case, &import).unwrap().forward;
        let bytes = forward.into_training(options).unwrap().into_plan().unwrap().to_bytes();
        let mut cpu = Session::from_bytes(&bytes, SessionOptions { reference_kernels: true, ..SessionOptions::default() }).unwrap();
        let mut gpu = Session::from_bytes(&bytes, SessionOptions { backend: BackendChoice::Wgpu, ..SessionOptions::default() })
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let TensorValues::F32(x) = &inputs[0].values else { panic!("{case}: float input") };
        let target_role = pock::engine::plan::Role::Target;
        let n: usize = cpu.plan().tensors.iter().find(|t| t.role == target_role).map(|t| t.shape.iter().product()).unwrap();
        let target: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        for step in 0..2 {
            let want = cpu.train_step(x, Targets::Values(&target)).unwrap();
            let got = gpu.train_step(x, Targets::Values(&target)).unwrap();
            assert!((got - want).abs() <= 1e-5 * want.abs(), "{case} step {step}: loss {got} on the GPU, {want} on the CPU");
        }
        for name in common::trainable_names(&cpu) {
            let (want, got) = (cpu.read_tensor(&name).unwrap(), gpu.read_tensor(&name).unwrap());
            let tol = 1e-5 * rms(&want);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= tol, "{case}: {name}[{i}] = {a} on the GPU, {b} on the CPU (tolerance {tol})");
            }
        }
    }
}
