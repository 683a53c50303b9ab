//! pock: compiled on-device training. This crate is the facade over the workspace (compiler,
//! engine, models, targets) and the home of the `pock` command line.
//!
//! ```no_run
//! use pock::compiler::CompileOptions;
//! let plan = pock::compile_model("zoo:mlp:inputs=4,classes=3", 16, 0, CompileOptions::default()).unwrap();
//! std::fs::write("mlp.pock", plan.to_bytes()).unwrap();
//! let mut session = pock::engine::Session::load("mlp.pock".as_ref(), Default::default()).unwrap();
//! # let _ = &mut session;
//! ```

pub mod bench;
pub mod data;
pub mod demo;
pub mod error;
pub mod export;
pub mod init;
pub mod inspect;
pub mod schedule;
pub mod scheme_search;
pub mod synth;
pub mod train;

pub use error::PockError;
pub use pock_compiler as compiler;
pub use pock_engine as engine;
pub use pock_models as models;
pub use pock_targets as targets;

use std::path::Path;

use pock_compiler::onnx::ImportOptions;
use pock_compiler::{CompileOptions, CompiledPlan, ForwardGraph};
use pock_engine::plan::ModelSource;

/// Compiles a model into a training plan. `model` is a zoo spec (`zoo:cnn`,
/// `zoo:mobilenetv2:classes=10,size=128`); `seed` drives parameter initialisation.
pub fn compile_model(model: &str, batch: usize, seed: u64, options: CompileOptions) -> Result<CompiledPlan, PockError> {
    compile_model_from(model, batch, seed, options, None)
}

/// [`compile_model`] with the initial parameters and running statistics read from `init` (see
/// [`init::load_initial_values`]) instead of drawn from `seed`: how a plan fine-tunes a model
/// trained by another plan, whatever update scheme each uses.
pub fn compile_model_from(
    model: &str,
    batch: usize,
    seed: u64,
    options: CompileOptions,
    init: Option<&Path>,
) -> Result<CompiledPlan, PockError> {
    if pock_targets::find(&options.target).is_none() {
        return Err(unknown_target(&options.target));
    }
    if model.ends_with(".onnx") {
        let import = ImportOptions { shapes: pock_compiler::onnx::ShapeOverrides::parse::<&str>(Some(batch), &[])?, ..Default::default() };
        return Ok(compile_onnx_from(Path::new(model), &import, options, init)?.0);
    }
    let forward = zoo_forward(model, batch, seed, init)?;
    compile_forward(forward, options, ModelSource::Zoo { spec: model.to_string() })
}

/// Builds a zoo model (`zoo:NAME[:key=value,...]`) for `batch` samples, with the initial values of
/// `init` when given (see [`compile_model_from`]), ready for [`compile_forward`].
pub fn zoo_forward(model: &str, batch: usize, seed: u64, init: Option<&Path>) -> Result<ForwardGraph, PockError> {
    if batch == 0 {
        return Err(PockError::Usage("--batch must be at least 1".into()));
    }
    if batch > MAX_BATCH {
        return Err(PockError::Usage(format!(
            "--batch {batch} is out of range: it must be at most {MAX_BATCH} (and the plan must still fit in memory)"
        )));
    }
    if !model.starts_with("zoo:") {
        return Err(PockError::Usage(format!(
            "cannot compile '{model}': models are given as zoo:NAME[:key=value,...] or as a path to an .onnx file (see `pock compile --help`)"
        )));
    }
    let mut forward = pock_models::build(model, batch, seed)?;
    if let Some(path) = init {
        init::load_initial_values(&mut forward, path)?;
    }
    Ok(forward)
}

/// Compiles a model already built or imported ([`zoo_forward`], [`onnx_forward`]) into a plan
/// that records `source`. The forward graph can be cloned to compile it several ways.
pub fn compile_forward(forward: ForwardGraph, options: CompileOptions, source: ModelSource) -> Result<CompiledPlan, PockError> {
    if pock_targets::find(&options.target).is_none() {
        return Err(unknown_target(&options.target));
    }
    let mut compiled = forward.into_training(options)?.into_plan()?;
    check_sizes(&compiled.plan)?;
    compiled.plan.source = source;
    Ok(compiled)
}

fn unknown_target(target: &str) -> PockError {
    PockError::Usage(format!("unknown target '{target}'; known targets: {}", pock_targets::names().join(", ")))
}

/// Refuses a `--target` that is not a known board, listing the known ones.
pub fn check_target(target: &str) -> Result<(), PockError> {
    match pock_targets::find(target) {
        Some(_) => Ok(()),
        None => Err(unknown_target(target)),
    }
}

/// The largest batch `compile_model` accepts: large enough for any batch that fits a machine,
/// small enough that a batch times any zoo model's per-sample size cannot overflow.
pub const MAX_BATCH: usize = 1 << 20;

/// Refuses a plan with a tensor whose byte size does not fit in 64 bits (a wrapped size would
/// describe a plan that cannot be loaded), naming the tensor.
fn check_sizes(plan: &pock_engine::Plan) -> Result<(), PockError> {
    for t in &plan.tensors {
        let bytes = t.shape.iter().try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        if bytes.is_none() {
            return Err(PockError::Usage(format!(
                "tensor '{}' of shape {} has more bytes than fit in 64 bits; use a smaller --batch or model",
                t.name,
                inspect::shape_text(&t.shape)
            )));
        }
    }
    Ok(())
}

/// Refuses a plan whose arena and weight section together exceed `budget` bytes, naming the bytes
/// it needs and its largest contributors (`pock_compiler::memory::check_budget`). Without a
/// budget: the memory of the board the plan targets, or for `host` this machine's physical
/// memory.
pub fn check_memory(plan: &pock_engine::Plan, budget: Option<u64>) -> Result<(), PockError> {
    let (limit, source) = match budget {
        Some(b) => (b, "--memory-budget".to_string()),
        None => match pock_targets::find(&plan.target) {
            Some(t) if t.name != "host" => (t.memory_bytes, format!("the memory of --target {} ({})", t.name, t.description)),
            _ => match pock_engine::session::physical_memory() {
                Some(m) => (m, "this machine's physical memory".to_string()),
                None => return Ok(()),
            },
        },
    };
    Ok(pock_compiler::memory::check_budget(plan, limit, &source)?)
}

/// Whether `a` and `b` are the same file: the same path, a symlink to it, or a hard link (the
/// same device and inode). False when either does not exist.
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y),
        _ => false,
    }
}

/// Compiles an ONNX model into a training plan. `import` fixes its dynamic dimensions, picks the
/// output to train and the loss. Returns the plan and the importer's notes (behaviours that
/// differ from the ONNX graph's, one sentence each) for the user to read.
pub fn compile_onnx(path: &Path, import: &ImportOptions, options: CompileOptions) -> Result<(CompiledPlan, Vec<String>), PockError> {
    compile_onnx_from(path, import, options, None)
}

/// [`compile_onnx`] with the initial values of `init` (see [`compile_model_from`]).
pub fn compile_onnx_from(
    path: &Path,
    import: &ImportOptions,
    options: CompileOptions,
    init: Option<&Path>,
) -> Result<(CompiledPlan, Vec<String>), PockError> {
    if pock_targets::find(&options.target).is_none() {
        return Err(unknown_target(&options.target));
    }
    let (forward, source, notes) = onnx_forward(path, import, init)?;
    Ok((compile_forward(forward, options, source)?, notes))
}

/// Imports an ONNX model with the initial values of `init` when given, ready for
/// [`compile_forward`]: the model, its source for the plan, and the importer's notes.
pub fn onnx_forward(
    path: &Path,
    import: &ImportOptions,
    init: Option<&Path>,
) -> Result<(ForwardGraph, ModelSource, Vec<String>), PockError> {
    let mut imported = pock_compiler::onnx::import_file(path, import)?;
    if let Some(init) = init {
        init::load_initial_values(&mut imported.forward, init)?;
    }
    Ok((imported.forward, onnx_source(path)?, imported.notes))
}

/// Where an ONNX model came from: its path as given and a hash of the model file's bytes (not of
/// its external data), so that `pock export` can find the graph again and tell if it changed.
pub fn onnx_source(path: &Path) -> Result<ModelSource, PockError> {
    let bytes = std::fs::read(path).map_err(|source| PockError::Io { path: path.display().to_string(), source })?;
    Ok(ModelSource::Onnx { path: path.display().to_string(), fnv1a64: pock_engine::checkpoint::fnv1a64(&bytes), bytes: bytes.len() as u64 })
}

/// A byte count for people: `9.27 MiB`.
pub use pock_compiler::accounting::human_bytes;
