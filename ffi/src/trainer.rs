//! [`Trainer`]: the session as a safe, thread-safe object for app code, in Rust and (with the
//! `uniffi` feature) in Kotlin, Swift and Python.
//!
//! uniffi passes buffers as owned vectors, so the exported methods take and return `Vec`s; Rust
//! apps that want no allocation per step use the slice methods ([`Trainer::train_labels`],
//! [`Trainer::infer_into`]), which the exported ones call.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use pock_engine::{Session, SessionError, SessionOptions, Targets};

use crate::c_api::{single_float_input, sizes_of, PockSizes, PockStatus};

/// Why a [`Trainer`] call failed; the message says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Error))]
pub enum PockError {
    /// An argument is not usable (a thread count of 0, a negative learning rate).
    #[error("{message}")]
    InvalidArgument { message: String },
    /// A file could not be opened or read.
    #[error("{message}")]
    Open { message: String },
    /// The plan file is damaged, of another format version, or does not fit in memory.
    #[error("{message}")]
    Plan { message: String },
    /// The batch does not match the plan (wrong lengths, labels for a regression plan, ...).
    #[error("{message}")]
    Input { message: String },
    /// A program failed while running.
    #[error("{message}")]
    Run { message: String },
    /// A checkpoint could not be written, read, or does not belong to this plan.
    #[error("{message}")]
    Checkpoint { message: String },
    /// An earlier call panicked while holding the session; open the plan again.
    #[error("{message}")]
    Poisoned { message: String },
}

impl From<SessionError> for PockError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match crate::c_api::status_of(&e) {
            PockStatus::Open => PockError::Open { message },
            PockStatus::Plan => PockError::Plan { message },
            PockStatus::Run => PockError::Run { message },
            PockStatus::Checkpoint => PockError::Checkpoint { message },
            _ => PockError::Input { message },
        }
    }
}

/// A plan loaded for training and inference, safe to share between threads (calls take turns).
#[cfg_attr(feature = "uniffi", derive(uniffi::Object))]
pub struct Trainer {
    session: Mutex<Session>,
    sizes: PockSizes,
}

impl Trainer {
    fn lock(&self) -> Result<MutexGuard<'_, Session>, PockError> {
        self.session.lock().map_err(|_| PockError::Poisoned {
            message: "an earlier call on this trainer panicked, so its state is unknown; open the plan again".into(),
        })
    }

    fn check_len(what: &str, given: usize, expected: usize) -> Result<(), PockError> {
        if given == expected {
            return Ok(());
        }
        Err(PockError::Input {
            message: format!("{what} has {given} values, but this plan needs {expected} per step; see the trainer's sizes"),
        })
    }

    /// [`Trainer::train_step`] on borrowed buffers (no allocation).
    pub fn train_labels(&self, inputs: &[f32], labels: &[i64]) -> Result<f32, PockError> {
        let mut session = self.lock()?;
        let input_len = single_float_input(&session).map_err(|f| PockError::Input { message: f.message })?;
        Self::check_len("inputs", inputs.len(), input_len)?;
        Self::check_len("labels", labels.len(), self.sizes.target_len)?;
        Ok(session.train_step(inputs, Targets::Labels(labels))?)
    }

    /// [`Trainer::train_step_values`] on borrowed buffers (no allocation).
    pub fn train_values(&self, inputs: &[f32], targets: &[f32]) -> Result<f32, PockError> {
        let mut session = self.lock()?;
        let input_len = single_float_input(&session).map_err(|f| PockError::Input { message: f.message })?;
        Self::check_len("inputs", inputs.len(), input_len)?;
        Self::check_len("targets", targets.len(), self.sizes.target_len)?;
        Ok(session.train_step(inputs, Targets::Values(targets))?)
    }

    /// [`Trainer::infer`] into a borrowed buffer of [`Trainer::output_len`] floats.
    pub fn infer_into(&self, inputs: &[f32], outputs: &mut [f32]) -> Result<(), PockError> {
        let mut session = self.lock()?;
        let input_len = single_float_input(&session).map_err(|f| PockError::Input { message: f.message })?;
        Self::check_len("inputs", inputs.len(), input_len)?;
        Self::check_len("outputs", outputs.len(), self.sizes.output_len)?;
        Ok(session.infer(inputs, outputs)?)
    }
}

#[cfg_attr(feature = "uniffi", uniffi::export)]
impl Trainer {
    /// Opens a plan file from `pock compile` with `threads` kernel threads (1 or more).
    #[cfg_attr(feature = "uniffi", uniffi::constructor)]
    pub fn open(plan_path: String, threads: u32) -> Result<Arc<Self>, PockError> {
        if threads == 0 {
            return Err(PockError::InvalidArgument { message: "threads is 0; give 1 or more".into() });
        }
        let options = SessionOptions { threads: threads as usize, reference_kernels: false, ..SessionOptions::default() };
        let session = Session::load(Path::new(&plan_path), options)?;
        let sizes = sizes_of(&session);
        Ok(Arc::new(Trainer { session: Mutex::new(session), sizes }))
    }

    /// Samples per step (fixed when the plan was compiled).
    pub fn batch(&self) -> u64 {
        self.sizes.batch as u64
    }

    /// Floats of input per step (batch × sample size).
    pub fn input_len(&self) -> u64 {
        self.sizes.input_len as u64
    }

    /// Targets per step: labels for a classifier, floats for a regression plan.
    pub fn target_len(&self) -> u64 {
        self.sizes.target_len as u64
    }

    /// Whether the plan trains from integer labels ([`Trainer::train_step`]) rather than float
    /// targets ([`Trainer::train_step_values`]).
    pub fn targets_are_labels(&self) -> bool {
        self.sizes.targets_are_labels
    }

    /// Floats an inference returns (batch × output size).
    pub fn output_len(&self) -> u64 {
        self.sizes.output_len as u64
    }

    /// Trains one step of a classifier on a batch and returns its loss (before the update).
    pub fn train_step(&self, inputs: Vec<f32>, labels: Vec<i64>) -> Result<f32, PockError> {
        self.train_labels(&inputs, &labels)
    }

    /// Trains one step of a regression (MSE) plan and returns its loss.
    pub fn train_step_values(&self, inputs: Vec<f32>, targets: Vec<f32>) -> Result<f32, PockError> {
        self.train_values(&inputs, &targets)
    }

    /// Runs the model on a batch (running statistics, no dropout) and returns its outputs.
    pub fn infer(&self, inputs: Vec<f32>) -> Result<Vec<f32>, PockError> {
        let mut outputs = vec![0.0; self.sizes.output_len];
        self.infer_into(&inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// Saves a checkpoint atomically (temporary file, fsync, rename): a crash leaves the old
    /// checkpoint or the new one.
    pub fn save(&self, path: String) -> Result<(), PockError> {
        Ok(self.lock()?.save(Path::new(&path))?)
    }

    /// Restores a checkpoint of this plan, all or nothing.
    pub fn resume(&self, path: String) -> Result<(), PockError> {
        self.lock()?.resume(Path::new(&path))?;
        Ok(())
    }

    /// Sets the learning rate of the following steps (finite, ≥ 0).
    pub fn set_learning_rate(&self, learning_rate: f32) -> Result<(), PockError> {
        if !learning_rate.is_finite() || learning_rate < 0.0 {
            return Err(PockError::InvalidArgument { message: format!("learning rate {learning_rate} is not a finite value ≥ 0") });
        }
        self.lock()?.set_learning_rate(learning_rate);
        Ok(())
    }

    /// Optimizer steps taken, restored by [`Trainer::resume`].
    pub fn optimizer_steps(&self) -> Result<u64, PockError> {
        Ok(self.lock()?.optimizer_steps())
    }
}
