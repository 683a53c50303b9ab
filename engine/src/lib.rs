//! pock's runtime: it loads a compiled plan, validates it, and executes its programs in one arena
//! that is allocated once per session.
//!
//! The core (plan format, validation, reference kernels, executor) builds without `std`; the
//! `std` feature adds memory-mapped plan files, checkpoints, the gemm-based CPU kernels and the
//! [`Session`] API.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod backend;
pub mod exec;
pub mod format;
pub mod kernels;
mod logging;
pub mod ops;
pub mod placement;
pub mod plan;

#[cfg(feature = "std")]
pub mod atomic;
#[cfg(feature = "std")]
pub mod checkpoint;
#[cfg(feature = "std")]
pub mod session;

pub use format::{decode_plan, encode_plan, FormatError};
pub use ops::Op;
pub use plan::{Plan, TensorId};
#[cfg(feature = "std")]
pub use session::{Input, InputError, Session, SessionError, SessionOptions, Targets};
