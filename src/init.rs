//! Initial weights from a file: a model compiled with the parameters and running statistics of an
//! earlier training run (`pock compile --init-weights`), whatever update scheme either run used.
//!
//! Fine-tuning needs this at compile time rather than at load time: a plan stores its frozen
//! parameters in its read-only weight section, so a session can only overwrite the trainable ones
//! (`Session::load_weights`). Taking every value from the file before the plan is built puts the
//! pretrained values in the weight section too.

use std::path::Path;

use pock_compiler::ir::Role;
use pock_compiler::ForwardGraph;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::PockError;

/// Replaces the initial value of every parameter and running statistic of `forward` with the
/// float32 tensor of the same name in the safetensors file at `path`: a pock checkpoint of a
/// plan that trained every parameter (`pock train --save`), the weights `pock export
/// --safetensors` writes (frozen parameters included), or any file that uses the model's names.
/// Returns how many tensors it replaced.
///
/// All or nothing: every tensor is checked (present, float32, same shape, finite) before any is
/// replaced. Tensors of the file that the model lacks (optimizer state, counters) are ignored.
pub fn load_initial_values(forward: &mut ForwardGraph, path: &Path) -> Result<usize, PockError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PockError::Io { path: shown.clone(), source })?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| PockError::Usage(format!("{shown} is not a safetensors file ({e}); give a checkpoint from `pock train --save` or weights from `pock export --safetensors`")))?;
    let wanted: Vec<usize> = forward
        .graph
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.role, Role::Parameter { .. } | Role::RunningStat))
        .map(|(i, _)| i)
        .collect();
    let mut values = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for &i in &wanted {
        let t = &forward.graph.tensors[i];
        let Ok(view) = file.tensor(&t.name) else {
            missing.push(t.name.clone());
            continue;
        };
        if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
            return Err(PockError::Usage(format!(
                "{shown}: tensor '{}' is {:?} {:?}, the model has float32 {:?}; initialise from weights of the same model (same spec, classes and size)",
                t.name,
                view.dtype(),
                view.shape(),
                t.shape
            )));
        }
        let floats: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(index) = floats.iter().position(|v| !v.is_finite()) {
            return Err(PockError::Usage(format!(
                "{shown}: tensor '{}' holds {} at element {index}; it comes from a run that diverged, initialise from an earlier checkpoint",
                t.name, floats[index]
            )));
        }
        values.push((i, floats));
    }
    if !missing.is_empty() {
        let more = if missing.len() > 3 { format!(" and {} more", missing.len() - 3) } else { String::new() };
        return Err(PockError::Usage(format!(
            "{shown} has no tensor named {}{more}; it must hold every parameter and running statistic of the model. A checkpoint of a plan with a sparse update scheme holds only its trainable parameters: write the whole model with `pock export PLAN --weights CHECKPOINT --safetensors OUT` and initialise from OUT",
            missing.iter().take(3).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        )));
    }
    let count = values.len();
    for (i, floats) in values {
        forward.graph.tensors[i].init = Some(pock_compiler::ir::Values::F32(floats));
    }
    Ok(count)
}
