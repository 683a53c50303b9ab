//! The facade's error type: every failure a user of the CLI or library can meet, each with a
//! message that says what to do.

use pock_compiler::onnx::{ExportError, ImportError};
use pock_compiler::CompileError;
use pock_engine::SessionError;
use pock_models::ModelError;

use crate::data::DataError;
use crate::schedule::ScheduleError;

#[derive(Debug, thiserror::Error)]
pub enum PockError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("compile: {0}")]
    Compile(#[from] CompileError),
    /// Boxed: import errors carry several strings, and every `Result` of the CLI would grow.
    #[error("ONNX import: {0}")]
    Import(Box<ImportError>),
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Boxed, as `Import`.
    #[error("export: {0}")]
    Export(Box<ExportError>),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("training diverged at step {step}: {reason} (loss {loss:e}, learning rate {lr:e}); try a lower learning rate (--lr) or gradient clipping (--clip-grad-norm at compile time)")]
    Diverged { step: u64, loss: f32, lr: f32, reason: String },
    #[error("{error}; {note}")]
    Stopped { error: Box<PockError>, note: String },
    #[error("interrupted by a signal after step {step}; {message}")]
    Interrupted { step: u64, message: String },
    #[error("the learning rate is {lr} at step {step} ({detail}); give a finite, positive --lr and schedule")]
    LearningRate { step: u64, lr: f32, detail: String },
}

impl From<ImportError> for PockError {
    fn from(e: ImportError) -> Self {
        PockError::Import(Box::new(e))
    }
}

impl From<ExportError> for PockError {
    fn from(e: ExportError) -> Self {
        PockError::Export(Box::new(e))
    }
}
