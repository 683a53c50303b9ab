//! Conformance: the ONNX backend node tests, forward, for every op pock imports (`supported_ops()`).
//!
//! The cases come from `$POCK_ONNX_NODE_TESTS` (a directory holding `node/test_*/`) or, when that
//! is unset, from `tools/onnx-node-tests/generate.py` run with `$POCK_PYTHON` (default `python3`)
//! into a temporary directory; a Python without the `onnx` wheel fails the test. Each case is
//! imported forward-only (every graph output, no loss), run by the compiler's f32 interpreter on
//! the case's inputs, and compared with the expected outputs at the tolerances of ONNX's own
//! runner (rtol 1e-3, atol 1e-7; NaN equals NaN). Inputs that pock reads at compile time
//! (`INITIALIZER_INPUTS`) are fed as initializers, the way exporters write them.
//!
//! A case counts under its op when its model is that single node; multi-node cases (the
//! `_expanded` function bodies and a few composite tests) are skipped, since they test the ops
//! of the expansion rather than the op in the name. The checked-in `tests/onnx/node_tests.txt`
//! names the claimed ops (`op NAME`), the imported but unclaimed ones (`partial NAME`) and the
//! cases expected to pass. The test fails when a listed case fails, when the listed ops differ from
//! `supported_ops()`, or when a claimed op passes fewer than 95% of its cases in pock's element
//! types (f32, i64, bool; the others are refused by the loader, which the table shows apart). `cargo test --test onnx_conformance -- --ignored write_tables` rewrites the list
//! and the README's op table from a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use pock::compiler::interp::Interpreter;
use pock::compiler::ir::DType;
use pock::compiler::onnx::fold::ConstData;
use pock::compiler::onnx::proto::ModelProto;
use pock::compiler::onnx::proto::TensorProto;
use pock::compiler::onnx::{
    import_forward, load_model_bytes, load_tensor_bytes, supported_ops, DataType, ImportError, ImportOptions, OnnxModel, OutputValue,
    Tensor, TensorValues,
};
use prost::Message;

/// ONNX's backend runner defaults (`onnx.backend.test.case.model` rtol and atol).
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;
/// The share of a claimed op's cases that must pass.
const THRESHOLD: f64 = 0.95;

const LIST: &str = "tests/onnx/node_tests.txt";

/// Per ONNX op, the positions of the node inputs that pock reads at compile time (its plans are
/// static: reshape targets, axes, repeats, pads, split sizes, clip bounds, dropout ratio) or needs
/// as weights (BatchNorm's scale, bias and running statistics). The node tests feed these as graph
/// inputs; the runner turns them into initializers holding the test's values, as exporters write
/// them. Every other input stays a run-time tensor.
const INITIALIZER_INPUTS: &[(&str, &[usize])] = &[
    ("BatchNormalization", &[1, 2, 3, 4]),
    ("Clip", &[1, 2]),
    ("ConstantOfShape", &[0]),
    ("Dropout", &[1, 2]),
    ("Expand", &[1]),
    // The condition: pock imports an If whose condition is known at compile time.
    ("If", &[0]),
    ("OneHot", &[1, 2]),
    ("Pad", &[1, 2, 3]),
    ("Range", &[0, 1, 2]),
    ("ReduceL1", &[1]),
    ("ReduceL2", &[1]),
    ("ReduceLogSum", &[1]),
    ("ReduceLogSumExp", &[1]),
    ("ReduceMax", &[1]),
    ("ReduceMean", &[1]),
    ("ReduceMin", &[1]),
    ("ReduceProd", &[1]),
    ("ReduceSum", &[1]),
    ("ReduceSumSquare", &[1]),
    ("Reshape", &[1]),
    ("Resize", &[1, 2, 3]),
    ("Slice", &[1, 2, 3, 4]),
    ("Split", &[1]),
    ("Squeeze", &[1]),
    ("Tile", &[1]),
    ("TopK", &[1]),
    ("Trilu", &[1]),
    ("Unsqueeze", &[1]),
];

fn initializer_inputs(op: &str) -> &'static [usize] {
    INITIALIZER_INPUTS.iter().find(|(o, _)| *o == op).map_or(&[], |(_, p)| p)
}
const README_BEGIN: &str = "<!-- onnx-node-tests:begin -->";
const README_END: &str = "<!-- onnx-node-tests:end -->";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under the system temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of `test_*` case folders, and the temporary directory to keep alive if one was made.
fn node_cases() -> (PathBuf, Option<TempDir>) {
    if let Some(dir) = std::env::var_os("POCK_ONNX_NODE_TESTS") {
        let dir = PathBuf::from(dir);
        let node = if dir.join("node").is_dir() { dir.join("node") } else { dir.clone() };
        assert!(node.is_dir(), "POCK_ONNX_NODE_TESTS={} is not a directory of generated node tests", dir.display());
        return (node, None);
    }
    let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_onnx = Command::new(&python).args(["-c", "import onnx.backend.test.case.node"]).output().is_ok_and(|o| o.status.success());
    assert!(
        has_onnx,
        "the ONNX node tests need Python's onnx wheel: run `{python} -m pip install onnx==1.23.*`, or set POCK_PYTHON to a python \
         that has it, or POCK_ONNX_NODE_TESTS to a directory made by tools/onnx-node-tests/generate.py"
    );
    let dir = std::env::temp_dir().join(format!("pock-onnx-node-tests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let temp = TempDir(dir.clone());
    let out = Command::new(&python).arg(root().join("tools/onnx-node-tests/generate.py")).arg(&dir).output().expect("running generate.py");
    assert!(out.status.success(), "tools/onnx-node-tests/generate.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    (dir.join("node"), Some(temp))
}

/// One generated case and what became of it.
struct Case {
    name: String,
    /// The op type of its single node; `None` for multi-node models.
    op: Option<String>,
    /// The opset the generator converted the case from, if it did.
    converted_from: Option<String>,
    /// The first input or output element type outside pock's f32, i64 and bool, if any.
    foreign_dtype: Option<String>,
    outcome: Result<(), String>,
}

/// The op type of a single-node model in the default domain, read from the raw protobuf so that
/// models pock's loader refuses (an opset it does not read) still count under their op.
fn single_op(bytes: &[u8]) -> Result<Option<String>, String> {
    let model = ModelProto::decode(bytes).map_err(|e| format!("model.onnx does not decode: {e}"))?;
    let nodes = model.graph.map(|g| g.node).unwrap_or_default();
    Ok(match nodes.as_slice() {
        [n] if n.domain.as_deref().is_none_or(|d| d.is_empty() || d == "ai.onnx") => n.op_type.clone(),
        _ => None,
    })
}

fn read_tensors(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut tensors = Vec::new();
    for i in 0.. {
        let path = dir.join(format!("{prefix}_{i}.pb"));
        if !path.exists() {
            break;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        tensors.push(load_tensor_bytes(&bytes).map_err(|e| format!("{prefix}_{i}: {}", reason(&e)))?);
    }
    Ok(tensors)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").to_string()
}

/// A short reason for the allow-list and the failure report.
fn reason(e: &ImportError) -> String {
    match e {
        ImportError::UnsupportedOps { missing, .. } => format!("not imported: {}", missing.join(", ")),
        ImportError::UnsupportedDtype { dtype, .. } => format!("unsupported dtype {dtype}"),
        ImportError::UnsupportedInputType { input, dtype } => format!("unsupported dtype {dtype} (input '{input}')"),
        other => first_line(&other.to_string()),
    }
}

/// The model with the node inputs at `positions` that are graph inputs turned into initializers
/// holding the data set's values: operands that pock reads at compile time (a reshape target,
/// reduction axes, clip bounds) or needs as weights (BatchNorm's scale, bias and running
/// statistics), which the node tests feed as graph inputs.
fn with_initializer_inputs(model: &OnnxModel, inputs: &[Tensor], positions: &[usize]) -> OnnxModel {
    let mut model = model.clone();
    let names: Vec<String> =
        model.nodes.iter().flat_map(|n| positions.iter().filter_map(|&p| n.inputs.get(p).filter(|s| !s.is_empty()).cloned())).collect();
    for name in names {
        if let (Some(k), Some(t)) = (model.inputs.iter().position(|v| v.name == name), inputs.iter().find(|t| t.name == name)) {
            model.inputs.remove(k);
            model.initializers.push(t.clone());
        }
    }
    model
}

/// Imports the case's model, runs every data set through the interpreter and compares outputs.
fn run_case(dir: &Path, model_bytes: &[u8], initializer_inputs: &[usize]) -> Result<(), String> {
    let loaded = load_model_bytes(model_bytes, Some(dir)).map_err(|e| reason(&e))?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test_data_set_* folder".into());
    }
    for set in sets {
        let mut inputs = read_tensors(&set, "input")?;
        let expected = read_tensors(&set, "output")?;
        for (i, t) in inputs.iter_mut().enumerate() {
            if t.name.is_empty() {
                t.name = loaded.inputs.get(i).map(|v| v.name.clone()).unwrap_or_default();
            }
        }
        let model = with_initializer_inputs(&loaded, &inputs, initializer_inputs);
        // The data inputs take the shapes of the values fed to them; an omitted optional input
        // has no file.
        let mut options = ImportOptions::default();
        for t in &inputs {
            if model.inputs.iter().any(|v| v.name == t.name) {
                options.shapes.shapes.push((t.name.clone(), t.dims.clone()));
            }
        }
        let imported = import_forward(&model, &options).map_err(|e| reason(&e))?;
        let graph = &imported.graph;
        let mut interp = Interpreter::<f32>::new(graph);
        for &id in &imported.inputs {
            let def = graph.tensor(id);
            let value = inputs.iter().find(|t| t.name == def.name).ok_or(format!("no value for input '{}'", def.name))?;
            if value.dims != graph.shape(id) {
                return Err(format!("input '{}' has shape {:?}, the graph {:?}", def.name, value.dims, graph.shape(id)));
            }
            match (&value.values, def.dtype) {
                (TensorValues::F32(v), DType::F32) => interp.set(id, v.clone()),
                (TensorValues::I64(v), DType::I64) => interp.set_int(id, v.clone()),
                (TensorValues::Bool(v), DType::Bool) => interp.set_bool(id, v.iter().map(|&b| u8::from(b)).collect()),
                (TensorValues::F32(_) | TensorValues::I64(_) | TensorValues::Bool(_), dtype) => {
                    return Err(format!("input '{}' is {}, the graph's {}", def.name, value.dtype(), dtype.name()))
                }
                (other, _) => return Err(format!("unsupported dtype {} (input '{}')", other.dtype(), def.name)),
            }
        }
        interp.run(&graph.nodes).map_err(|e| first_line(&e.to_string()))?;
        if expected.len() != imported.outputs.len() {
            return Err(format!("{} expected outputs for {} graph outputs", expected.len(), imported.outputs.len()));
        }
        for ((name, value), want) in imported.outputs.iter().zip(&expected) {
            let (dims, got): (Vec<usize>, Got) = match value {
                OutputValue::Const(c) => (
                    c.dims.clone(),
                    match &c.data {
                        ConstData::F32(v) => Got::F32(v.clone()),
                        ConstData::I64(v) => Got::I64(v.clone()),
                        ConstData::Bool(v) => Got::Bool(v.iter().map(|&b| u8::from(b)).collect()),
                        // Only --quantize int8 makes int8 values; the importer never does.
                        ConstData::I8(_) => return Err(format!("output '{name}' is an int8 constant")),
                    },
                ),
                OutputValue::Tensor(t) => {
                    let missing = || format!("output '{name}' was not computed");
                    let got = match graph.tensor(*t).dtype {
                        DType::F32 => Got::F32(interp.get(*t).ok_or_else(missing)?.to_vec()),
                        DType::I64 => Got::I64(interp.get_int(*t).ok_or_else(missing)?.to_vec()),
                        DType::Bool => Got::Bool(interp.get_bool(*t).ok_or_else(missing)?.to_vec()),
                        other => return Err(format!("output '{name}' has dtype {}", other.name())),
                    };
                    (graph.shape(*t).to_vec(), got)
                }
            };
            if dims != want.dims {
                return Err(format!("output '{name}' has shape {dims:?}, expected {:?}", want.dims));
            }
            compare(name, &got, &want.values)?;
        }
    }
    Ok(())
}

enum Got {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<u8>),
}

impl Got {
    fn dtype(&self) -> DataType {
        match self {
            Got::F32(_) => DataType::F32,
            Got::I64(_) => DataType::I64,
            Got::Bool(_) => DataType::Bool,
        }
    }
}

/// Element types must match exactly (as ONNX's runner checks); floats agree within
/// `ATOL + RTOL * |expected|`, with NaN equal to NaN and infinities equal only to themselves.
fn compare(name: &str, got: &Got, want: &TensorValues) -> Result<(), String> {
    match (got, want) {
        (Got::F32(g), TensorValues::F32(w)) => {
            for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
                let (g, w) = (f64::from(g), f64::from(w));
                let close = if w.is_nan() || g.is_nan() || w.is_infinite() || g.is_infinite() {
                    (w.is_nan() && g.is_nan()) || g == w
                } else {
                    (g - w).abs() <= ATOL + RTOL * w.abs()
                };
                if !close {
                    return Err(format!("output '{name}'[{i}] is {g}, expected {w}"));
                }
            }
            Ok(())
        }
        (Got::I64(g), TensorValues::I64(w)) => match g.iter().zip(w).position(|(a, b)| a != b) {
            Some(i) => Err(format!("output '{name}'[{i}] is {}, expected {}", g[i], w[i])),
            None => Ok(()),
        },
        (Got::Bool(g), TensorValues::Bool(w)) => match g.iter().zip(w).position(|(&a, &b)| (a != 0) != b) {
            Some(i) => Err(format!("output '{name}'[{i}] is {}, expected {}", g[i] != 0, w[i])),
            None => Ok(()),
        },
        (_, TensorValues::F32(_) | TensorValues::I64(_) | TensorValues::Bool(_)) => {
            Err(format!("output '{name}' is {}, expected {}", got.dtype(), want.dtype()))
        }
        (_, other) => Err(format!("unsupported dtype {} (output '{name}')", other.dtype())),
    }
}

/// The first element type outside f32, i64 and bool among a case's input and output files (read
/// from the raw protobuf, so that types pock's reader refuses are still named).
fn foreign_dtype(dir: &Path) -> Option<String> {
    let set = dir.join("test_data_set_0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&set).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).ok()?;
        let code = TensorProto::decode(bytes.as_slice()).ok().and_then(|t| t.data_type).unwrap_or(0);
        let dtype = DataType::from_onnx(code);
        if !matches!(dtype, DataType::F32 | DataType::I64 | DataType::Bool) {
            return Some(if code == 0 { "a sequence, map or optional".into() } else { dtype.name() });
        }
    }
    None
}

/// Runs every single-node case of a claimed op (catching panics, which count as failures).
fn run_all(node_dir: &Path, claimed: &BTreeSet<String>) -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(node_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", node_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "{} holds no node test cases (test_*/model.onnx)", node_dir.display());
    let mut cases = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
        let converted_from = std::fs::read_to_string(dir.join("converted_from")).ok().map(|s| s.trim().to_string());
        let (op, outcome) = match single_op(&bytes) {
            Err(e) => (None, Err(e)),
            Ok(None) => (None, Err("multi-node model".into())),
            Ok(Some(op)) if !claimed.contains(&op) => (Some(op), Err("op not claimed".into())),
            Ok(Some(op)) => {
                let outcome = std::panic::catch_unwind(|| run_case(&dir, &bytes, initializer_inputs(&op))).unwrap_or_else(|p| {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    Err(format!("panicked: {}", first_line(&msg.unwrap_or_default())))
                });
                (Some(op), outcome)
            }
        };
        let foreign_dtype = foreign_dtype(&dir);
        cases.push(Case { name, op, converted_from, foreign_dtype, outcome });
    }
    cases
}

/// The allow-list. `op NAME` declares a claimed op and `partial NAME` an op that pock imports but
/// does not claim (fewer than 95% of its node tests in pock's element types pass, or none is in
/// them); the case names under either are expected to pass; `#` starts a comment.
struct AllowList {
    ops: BTreeMap<String, Vec<String>>,
    claimed: BTreeSet<String>,
}

fn read_list() -> AllowList {
    let text = std::fs::read_to_string(root().join(LIST)).unwrap_or_else(|e| panic!("{LIST}: {e}"));
    let mut list = AllowList { ops: BTreeMap::new(), claimed: BTreeSet::new() };
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let declared = line.strip_prefix("op ").map(|op| (op, true)).or_else(|| line.strip_prefix("partial ").map(|op| (op, false)));
        if let Some((op, claimed)) = declared {
            let op = op.trim().to_string();
            if claimed {
                list.claimed.insert(op.clone());
            }
            assert!(list.ops.insert(op.clone(), Vec::new()).is_none(), "{LIST}:{}: op {op} is declared twice", n + 1);
            current = Some(op);
        } else {
            let op = current.as_ref().unwrap_or_else(|| panic!("{LIST}:{}: case '{line}' comes before any `op NAME` line", n + 1));
            list.ops.get_mut(op).unwrap().push(line.to_string());
        }
    }
    list
}

/// One claimed op's counts.
#[derive(Clone, Copy, Default)]
struct Tally {
    cases: usize,
    passed: usize,
    /// Cases whose inputs and outputs are all f32, i64 or bool, and how many of them pass.
    in_dtypes: usize,
    passed_in_dtypes: usize,
}

fn tally(cases: &[Case], claimed: &BTreeSet<String>) -> BTreeMap<String, Tally> {
    let mut table: BTreeMap<String, Tally> = claimed.iter().map(|op| (op.clone(), Tally::default())).collect();
    for c in cases {
        if let Some(t) = c.op.as_ref().and_then(|op| table.get_mut(op)) {
            let ok = usize::from(c.outcome.is_ok());
            t.cases += 1;
            t.passed += ok;
            if c.foreign_dtype.is_none() {
                t.in_dtypes += 1;
                t.passed_in_dtypes += ok;
            }
        }
    }
    table
}

fn percent(cases: usize, passed: usize) -> f64 {
    if cases == 0 {
        100.0
    } else {
        100.0 * passed as f64 / cases as f64
    }
}

/// The README section: one row per claimed op, then the totals.
fn markdown_table(table: &BTreeMap<String, Tally>, claimed: &BTreeSet<String>) -> String {
    let mut s = String::from(
        "| op | claimed | cases | passed | % | cases in f32/i64/bool | passed | % |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut all = Tally::default();
    let shown = |cases: usize, passed: usize| if cases == 0 { "-".to_string() } else { format!("{:.0}", percent(cases, passed)) };
    let row = |name: &str, claim: &str, t: &Tally| {
        format!(
            "| {name} | {claim} | {} | {} | {} | {} | {} | {} |\n",
            t.cases,
            t.passed,
            shown(t.cases, t.passed),
            t.in_dtypes,
            t.passed_in_dtypes,
            shown(t.in_dtypes, t.passed_in_dtypes)
        )
    };
    let mut ours = Tally::default();
    for (op, t) in table {
        let is_claimed = claimed.contains(op);
        s.push_str(&row(op, if is_claimed { "yes" } else { "partial" }, t));
        if is_claimed {
            ours.in_dtypes += t.in_dtypes;
            ours.passed_in_dtypes += t.passed_in_dtypes;
            ours.cases += t.cases;
            ours.passed += t.passed;
        }
        all.cases += t.cases;
        all.passed += t.passed;
        all.in_dtypes += t.in_dtypes;
        all.passed_in_dtypes += t.passed_in_dtypes;
    }
    s.push_str(&row("**claimed ops**", "", &ours));
    s.push_str(&row("**all imported**", "", &all));
    s
}

struct Run {
    cases: Vec<Case>,
    /// Every op pock imports (`supported_ops()`), claimed or partial.
    imported: BTreeSet<String>,
    list: AllowList,
    table: BTreeMap<String, Tally>,
}

/// Generates (or finds) the cases and runs them once per test binary; both tests read the result.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let imported: BTreeSet<String> = supported_ops().into_iter().map(String::from).collect();
        let list = read_list();
        let start = Instant::now();
        let (node_dir, _temp) = node_cases();
        let generated = start.elapsed();
        let start = Instant::now();
        let cases = run_all(&node_dir, &imported);
        let table = tally(&cases, &imported);
        println!("{}", markdown_table(&table, &list.claimed));
        let converted =
            cases.iter().filter(|c| c.op.as_ref().is_some_and(|op| imported.contains(op)) && c.converted_from.is_some()).count();
        println!(
            "{} node test cases, {} of them single-node cases of imported ops ({converted} converted to an opset pock reads); \
             generating took {:.1} s, running {:.1} s",
            cases.len(),
            table.values().map(|t| t.cases).sum::<usize>(),
            generated.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        Run { cases, imported, list, table }
    })
}

#[test]
fn onnx_node_tests_allow_listed_cases_pass() {
    let Run { cases, imported, list, .. } = run();
    let mut problems = Vec::new();
    let listed: BTreeSet<String> = list.ops.keys().cloned().collect();
    if &listed != imported {
        problems.push(format!(
            "{LIST} declares ops {:?} that supported_ops() does not import, and lacks imported ops {:?}: add or remove `op NAME` or \
             `partial NAME` lines (or run the write_tables test)",
            listed.difference(imported).collect::<Vec<_>>(),
            imported.difference(&listed).collect::<Vec<_>>()
        ));
    }
    let by_name: BTreeMap<&str, &Case> = cases.iter().map(|c| (c.name.as_str(), c)).collect();
    for (op, names) in &list.ops {
        for name in names {
            match by_name.get(name.as_str()) {
                None => problems.push(format!("{name} (listed under {op}) was not generated: remove it from {LIST}")),
                Some(c) if c.op.as_deref() != Some(op) => {
                    problems.push(format!("{name} is listed under {op} but is a case of {}", c.op.as_deref().unwrap_or("several ops")))
                }
                Some(Case { outcome: Err(e), .. }) => problems.push(format!("{name} ({op}) is allow-listed and fails: {e}")),
                Some(_) => {}
            }
        }
    }
    let newly: Vec<&str> = cases
        .iter()
        .filter(|c| c.outcome.is_ok() && c.op.as_ref().is_some_and(|op| !list.ops.get(op).is_some_and(|l| l.contains(&c.name))))
        .map(|c| c.name.as_str())
        .collect();
    if !newly.is_empty() {
        println!("passing but not yet in {LIST}: {}", newly.join(", "));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn onnx_node_tests_pass_rate_of_every_claimed_op_is_at_least_95_percent() {
    let Run { cases, table, list, .. } = run();
    let mut below = Vec::new();
    for op in &list.claimed {
        let t = table[op];
        if t.in_dtypes == 0 || percent(t.in_dtypes, t.passed_in_dtypes) < THRESHOLD * 100.0 {
            let failures: Vec<String> = cases
                .iter()
                .filter(|c| c.op.as_deref() == Some(op) && c.foreign_dtype.is_none())
                .filter_map(|c| c.outcome.as_ref().err().map(|e| format!("    {}: {e}", c.name)))
                .collect();
            below.push(format!(
                "{op} passes {} of its {} cases in f32/i64/bool, below 95% (declare it `partial` in {LIST} if that is right):\n{}",
                t.passed_in_dtypes,
                t.in_dtypes,
                failures.join("\n")
            ));
        }
    }
    assert!(below.is_empty(), "{} claimed op(s) below 95% of their node tests:\n{}", below.len(), below.join("\n"));
}

/// Rewrites the allow-list (passing cases listed, failing ones commented out with the reason) and
/// the README's op table from a run.
#[test]
#[ignore = "rewrites tests/onnx/node_tests.txt and the README table; run by hand"]
fn write_tables() {
    let Run { cases, imported, table, .. } = run();
    let mut list = String::from(
        "# The ONNX backend node tests pock must pass (tests/onnx_conformance.rs), grouped by op.\n\
         # `op NAME` declares an op pock claims: at least 95% of its node tests in pock's element types (f32, i64,\n\
         # bool) pass. `partial NAME` declares an op pock imports (supported_ops()) but does not claim. The names\n\
         # under either are its single-node cases that pass; commented-out names fail, with the reason. Inputs that\n\
         # pock reads at compile time are fed as initializers (INITIALIZER_INPUTS in the test). Regenerate with\n\
         # `cargo test --test onnx_conformance -- --ignored write_tables` and review the diff.\n",
    );
    let mut claimed = BTreeSet::new();
    for op in imported {
        let t = table[op];
        let claim = t.in_dtypes > 0 && percent(t.in_dtypes, t.passed_in_dtypes) >= THRESHOLD * 100.0;
        if claim {
            claimed.insert(op.clone());
        }
        let keyword = if claim { "op" } else { "partial" };
        list.push_str(&format!(
            "\n{keyword} {op}  # {} of {} pass; {} of {} in f32/i64/bool\n",
            t.passed, t.cases, t.passed_in_dtypes, t.in_dtypes
        ));
        for c in cases.iter().filter(|c| c.op.as_deref() == Some(op)) {
            match &c.outcome {
                Ok(()) => list.push_str(&format!("{}\n", c.name)),
                Err(e) => list.push_str(&format!("# {}: {}\n", c.name, e.replace('\n', " "))),
            }
        }
    }
    std::fs::write(root().join(LIST), list).unwrap();
    let readme_path = root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (head, rest) = readme.split_once(README_BEGIN).expect("README marker <!-- onnx-node-tests:begin -->");
    let (_, tail) = rest.split_once(README_END).expect("README marker <!-- onnx-node-tests:end -->");
    let skipped = cases.iter().filter(|c| c.op.is_none()).count();
    let section = format!(
        "{README_BEGIN}\n{}\nSingle-node cases of each imported op from the ONNX {} generators; the last three columns count \
         only cases whose inputs and outputs are f32, i64 or bool, pock's element types. An op is claimed when at least 95% of \
         those pass; `partial` ops import, but fewer of their node tests pass, or none is in those types (failures are listed in \
         tests/onnx/node_tests.txt). {skipped} multi-node cases (function \
         expansions) are not counted.\n{README_END}",
        markdown_table(table, &claimed),
        onnx_version()
    );
    std::fs::write(readme_path, format!("{head}{section}{tail}")).unwrap();
}

fn onnx_version() -> String {
    let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .args(["-c", "import onnx; print(onnx.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "(unknown version)".into())
}

#[test]
fn outputs_compare_at_onnx_tolerances_with_nan_equal_and_exact_dtypes() {
    let f = |v: &[f32]| TensorValues::F32(v.to_vec());
    assert!(compare("y", &Got::F32(vec![1000.9, 0.0, f32::NAN, f32::INFINITY]), &f(&[1000.0, 0.0, f32::NAN, f32::INFINITY])).is_ok());
    assert!(compare("y", &Got::F32(vec![1001.1]), &f(&[1000.0])).is_err(), "beyond rtol");
    assert!(compare("y", &Got::F32(vec![2e-7]), &f(&[0.0])).is_err(), "beyond atol");
    assert!(compare("y", &Got::F32(vec![0.0]), &f(&[f32::NAN])).is_err());
    assert!(compare("y", &Got::F32(vec![f32::INFINITY]), &f(&[f32::NEG_INFINITY])).is_err());
    assert!(compare("y", &Got::I64(vec![1, 2]), &TensorValues::I64(vec![1, 3])).is_err());
    assert!(compare("y", &Got::F32(vec![1.0]), &TensorValues::I64(vec![1])).unwrap_err().contains("is float32, expected int64"));
    assert!(compare("y", &Got::F32(vec![1.0]), &TensorValues::F64(vec![1.0])).unwrap_err().contains("unsupported dtype float64"));
}
