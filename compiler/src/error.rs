use pock_engine::ops::ShapeError;

/// Everything that can go wrong while compiling a model into a plan.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("node '{node}': {source}")]
    Shape { node: String, source: ShapeError },
    #[error("node '{node}' ({op}): {message}")]
    Node { node: String, op: &'static str, message: String },
    #[error("no gradient rule for op {op} (node '{node}'); it cannot lie between a trainable parameter and the loss")]
    NoGradient { node: String, op: &'static str },
    #[error("nothing to train: no parameter is trainable{hint}")]
    NothingTrainable { hint: String },
    #[error("invalid option: {0}")]
    Option(String),
    /// The plan does not fit a memory budget (see [`crate::memory::check_budget`]); the message
    /// names the bytes needed and the largest contributors.
    #[error("{message}")]
    OverBudget { needed: u64, budget: u64, message: String },
}

pub type Result<T, E = CompileError> = std::result::Result<T, E>;
