//! The C ABI: open a plan, train a step, infer, save and resume checkpoints, read errors.
//!
//! Conventions, for every function:
//! - It returns a [`PockStatus`]; on anything but `POCK_STATUS_OK` the reason is in the calling
//!   thread's last error ([`pock_last_error`], [`pock_last_error_copy`]), a message that says what
//!   to do next.
//! - No panic crosses the boundary: each entry point runs under `catch_unwind` and turns a panic
//!   into `POCK_STATUS_PANIC`. A session whose call panicked is marked poisoned and refuses
//!   further calls (`POCK_STATUS_POISONED`); free it and open the plan again.
//! - Every pointer is checked for NULL and alignment, every buffer length against what the plan
//!   needs, before any memory is read or written; the session never reads or writes past the
//!   lengths given. Buffers stay the caller's: nothing is kept after a call returns.
//! - A session is not synchronised: it may move between threads, but only one call may use it
//!   at a time.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pock_engine::plan::{DType, Loss};
use pock_engine::{Session, SessionError, SessionOptions, Targets};

/// What a call did. Anything but `POCK_STATUS_OK` leaves a message in the thread's last error.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PockStatus {
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is not usable: a misaligned buffer, overlapping buffers, a bad option or
    /// learning rate, a path that is not valid for this platform.
    InvalidArgument = 2,
    /// A buffer's length is not what the plan needs (the message gives both).
    SizeMismatch = 3,
    /// A file could not be opened or read.
    Open = 4,
    /// The plan file is damaged, of another format version, or does not fit in memory.
    Plan = 5,
    /// The batch does not match the plan: labels for a regression plan, several inputs, ...
    Input = 6,
    /// A program failed while running (an index out of range in the data, say).
    Run = 7,
    /// A checkpoint could not be written, read, or does not belong to this plan.
    Checkpoint = 8,
    /// pock panicked (a bug in pock: please report the message).
    Panic = 9,
    /// An earlier call on this session panicked; free it and open the plan again.
    Poisoned = 10,
}

/// How a session runs. Start from [`pock_options_default`] and change what you need, so fields
/// added later keep their defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PockOptions {
    /// Threads for the fast CPU kernels, 1 or more (default 1).
    pub threads: u32,
    /// Run the portable reference kernels instead of the fast ones (slow; for debugging).
    pub reference_kernels: bool,
}

/// What a session's buffers must hold, in elements (not bytes), for one step over a whole batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PockSizes {
    /// Samples per step, fixed when the plan was compiled.
    pub batch: usize,
    /// Data inputs of the model. The C ABI trains and infers plans with one float input.
    pub input_count: usize,
    /// Floats in the `inputs` buffer of a train step or an inference (batch × sample size).
    pub input_len: usize,
    /// Values in the targets buffer of a train step: labels (`int64_t`) when
    /// `targets_are_labels`, else floats (`pock_session_train_step_values`).
    pub target_len: usize,
    /// Whether the plan trains a classifier from integer labels (softmax cross-entropy) rather
    /// than float targets (MSE).
    pub targets_are_labels: bool,
    /// Floats an inference writes (batch × output size).
    pub output_len: usize,
}

/// A loaded plan with its arena: created by [`pock_session_open`], freed by
/// [`pock_session_free`].
pub struct PockSession {
    session: Session,
    /// Set while a call runs and cleared when it returns, so it stays set after a panic.
    poisoned: bool,
}

/// A failure on its way to the caller: a status and the message for the last error.
pub(crate) struct Failure {
    pub(crate) status: PockStatus,
    pub(crate) message: String,
}

impl Failure {
    fn new(status: PockStatus, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    fn null(argument: &str) -> Self {
        Failure::new(PockStatus::NullArgument, format!("{argument} is NULL; pass a valid pointer"))
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        let status = status_of(&e);
        Failure::new(status, e.to_string())
    }
}

pub(crate) fn status_of(e: &SessionError) -> PockStatus {
    match e {
        SessionError::Open { .. } => PockStatus::Open,
        SessionError::Format { .. } => PockStatus::Plan,
        SessionError::Exec(_) => PockStatus::Run,
        SessionError::Checkpoint(_) => PockStatus::Checkpoint,
        SessionError::Input(_) | SessionError::Inputs(_) => PockStatus::Input,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: &str) {
    // A C string cannot hold NUL bytes; a message never should, but a path might.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(text));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("pock panicked ({what}); this is a bug in pock: please report it with this message")
}

/// Runs one entry point's body: a panic becomes `POCK_STATUS_PANIC`, an error its status, and
/// both leave their message in the last error.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> PockStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => PockStatus::Ok,
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            PockStatus::Panic
        }
    }
}

/// [`guard`] for a call on a session: checks the handle and the poison flag, and leaves the
/// session poisoned if `body` panics.
fn with_session(session: *mut PockSession, body: impl FnOnce(&mut Session) -> Result<(), Failure>) -> PockStatus {
    guard(|| {
        // SAFETY: the caller passes a pointer from pock_session_open that it has not freed, used
        // by one call at a time (the header says so); NULL is checked here.
        let handle = unsafe { session.as_mut() }.ok_or_else(|| Failure::null("session"))?;
        if handle.poisoned {
            return Err(Failure::new(
                PockStatus::Poisoned,
                "an earlier call on this session panicked, so its state is unknown; free it with pock_session_free and open the plan again",
            ));
        }
        handle.poisoned = true;
        let result = body(&mut handle.session);
        handle.poisoned = false;
        result
    })
}

/// A NUL-terminated path from C.
///
/// # Safety
/// `path` is NULL or points to a NUL-terminated string.
unsafe fn path_arg(path: *const c_char, argument: &str) -> Result<PathBuf, Failure> {
    if path.is_null() {
        return Err(Failure::null(argument));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    if bytes.is_empty() {
        return Err(Failure::new(PockStatus::InvalidArgument, format!("{argument} is an empty string; give a file path")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| Failure::new(PockStatus::InvalidArgument, format!("{argument} is not UTF-8; pass the path encoded as UTF-8")))
    }
}

/// Checks a caller's buffer (not NULL, aligned, exactly `expected` elements) and returns its
/// address range in bytes, before any slice is made of it.
fn check_buffer<T>(ptr: *const T, len: usize, expected: usize, argument: &str, what: &str) -> Result<(usize, usize), Failure> {
    if ptr.is_null() {
        return Err(Failure::null(argument));
    }
    if len != expected {
        return Err(Failure::new(
            PockStatus::SizeMismatch,
            format!("{argument} has {len} elements, but this plan needs {expected} ({what}); see pock_session_sizes"),
        ));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Failure::new(
            PockStatus::InvalidArgument,
            format!("{argument} is not aligned to {} bytes; pass a buffer of its element type", std::mem::align_of::<T>()),
        ));
    }
    // `expected` comes from the plan, whose sizes the engine checked against its arena, so this
    // cannot overflow for a valid session; checked anyway, since the end is used for overlaps.
    let bytes = len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b <= isize::MAX as usize);
    let end = bytes.and_then(|b| (ptr as usize).checked_add(b));
    match end {
        Some(end) => Ok((ptr as usize, end)),
        None => Err(Failure::new(PockStatus::InvalidArgument, format!("{argument} with {len} elements does not fit in memory"))),
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The sizes of `session`'s buffers.
pub(crate) fn sizes_of(session: &Session) -> PockSizes {
    let input_count = session.inputs().len();
    let input_len = if input_count == 1 { session.inputs().next().map_or(0, |t| t.numel()) } else { 0 };
    PockSizes {
        batch: session.batch(),
        input_count,
        input_len,
        target_len: session.target_shape().iter().product(),
        targets_are_labels: matches!(session.plan().training.loss, Loss::SoftmaxCrossEntropy { .. }),
        output_len: session.output_shape().iter().product(),
    }
}

/// The one float input the C ABI feeds, refused with a message for other plans.
pub(crate) fn single_float_input(session: &Session) -> Result<usize, Failure> {
    let mut inputs = session.inputs();
    match (inputs.len(), inputs.next()) {
        (1, Some(t)) if t.dtype == DType::F32 => Ok(t.numel()),
        (1, Some(t)) => Err(Failure::new(
            PockStatus::Input,
            format!(
                "this plan's input '{}' is {}, but the C ABI feeds float inputs; use the Rust API (Session::train_step_inputs)",
                t.name,
                t.dtype.name()
            ),
        )),
        (n, _) => Err(Failure::new(
            PockStatus::Input,
            format!(
                "this plan has {n} data inputs; the C ABI feeds plans with one float input, use the Rust API (Session::train_step_inputs)"
            ),
        )),
    }
}

/// Default options: 1 thread, fast kernels.
#[no_mangle]
pub extern "C" fn pock_options_default() -> PockOptions {
    PockOptions { threads: 1, reference_kernels: false }
}

/// pock's version, a static NUL-terminated string (do not free it).
#[no_mangle]
pub extern "C" fn pock_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Opens a plan file (from `pock compile`) and allocates its arena. `options` may be NULL for
/// the defaults. On success `*out` holds a session to free with [`pock_session_free`]; on
/// failure `*out` is set to NULL.
///
/// # Safety
/// `plan_path` is NULL or a NUL-terminated string; `options` is NULL or points to a
/// `PockOptions`; `out` is NULL or points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn pock_session_open(
    plan_path: *const c_char,
    options: *const PockOptions,
    out: *mut *mut PockSession,
) -> PockStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked not NULL; the caller provides writable storage.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: by the caller's contract.
        let path = unsafe { path_arg(plan_path, "plan_path") }?;
        // SAFETY: NULL or a valid PockOptions, by the caller's contract.
        let options = unsafe { options.as_ref() }.copied().unwrap_or(pock_options_default());
        if options.threads == 0 {
            return Err(Failure::new(PockStatus::InvalidArgument, "options.threads is 0; give 1 or more"));
        }
        let session_options =
            SessionOptions { threads: options.threads as usize, reference_kernels: options.reference_kernels, ..SessionOptions::default() };
        let session = Session::load(&path, session_options)?;
        let handle = Box::into_raw(Box::new(PockSession { session, poisoned: false }));
        // SAFETY: checked above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Frees a session and its arena. NULL is accepted and does nothing; freeing twice is not.
///
/// # Safety
/// `session` is NULL or a pointer from [`pock_session_open`] not yet freed, not in use by
/// another call.
#[no_mangle]
pub unsafe extern "C" fn pock_session_free(session: *mut PockSession) {
    if session.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: from Box::into_raw in pock_session_open, freed once by the caller's contract.
        drop(unsafe { Box::from_raw(session) });
        Ok(())
    });
}

/// Writes the sizes of `session`'s buffers into `*out`.
///
/// # Safety
/// `session` is NULL or a live session; `out` is NULL or points to a writable `PockSizes`.
#[no_mangle]
pub unsafe extern "C" fn pock_session_sizes(session: *mut PockSession, out: *mut PockSizes) -> PockStatus {
    with_session(session, |s| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { out.write(sizes_of(s)) };
        Ok(())
    })
}

/// Trains one step of a classifier plan on a batch: `inputs` holds `input_len` floats,
/// `labels` `target_len` class indices (see [`pock_session_sizes`]). Writes the batch's loss
/// (before the update) to `*loss`.
///
/// # Safety
/// Each pointer is NULL or valid for the number of elements given with it; `loss` is NULL or
/// writable; `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn pock_session_train_step(
    session: *mut PockSession,
    inputs: *const f32,
    inputs_len: usize,
    labels: *const i64,
    labels_len: usize,
    loss: *mut f32,
) -> PockStatus {
    with_session(session, |s| {
        let sizes = sizes_of(s);
        if !sizes.targets_are_labels {
            return Err(Failure::new(
                PockStatus::Input,
                "this plan is trained with float targets (MSE); call pock_session_train_step_values",
            ));
        }
        let input_len = single_float_input(s)?;
        check_buffer(inputs, inputs_len, input_len, "inputs", "batch × sample size floats")?;
        check_buffer(labels, labels_len, sizes.target_len, "labels", "one class index per target position")?;
        if loss.is_null() {
            return Err(Failure::null("loss"));
        }
        // SAFETY: both checked: not NULL, aligned, exactly as long as given, and valid for that
        // length by the caller's contract.
        let (x, y) = unsafe { (std::slice::from_raw_parts(inputs, inputs_len), std::slice::from_raw_parts(labels, labels_len)) };
        let value = s.train_step(x, Targets::Labels(y))?;
        // SAFETY: checked not NULL; writable by the caller's contract (an f32 store has no
        // alignment demands the caller's float cannot meet).
        unsafe { loss.write_unaligned(value) };
        Ok(())
    })
}

/// [`pock_session_train_step`] for a regression (MSE) plan: `targets` holds `target_len` floats.
///
/// # Safety
/// As [`pock_session_train_step`].
#[no_mangle]
pub unsafe extern "C" fn pock_session_train_step_values(
    session: *mut PockSession,
    inputs: *const f32,
    inputs_len: usize,
    targets: *const f32,
    targets_len: usize,
    loss: *mut f32,
) -> PockStatus {
    with_session(session, |s| {
        let sizes = sizes_of(s);
        if sizes.targets_are_labels {
            return Err(Failure::new(
                PockStatus::Input,
                "this plan is a classifier: it trains from int64 labels; call pock_session_train_step",
            ));
        }
        let input_len = single_float_input(s)?;
        check_buffer(inputs, inputs_len, input_len, "inputs", "batch × sample size floats")?;
        check_buffer(targets, targets_len, sizes.target_len, "targets", "batch × output size floats")?;
        if loss.is_null() {
            return Err(Failure::null("loss"));
        }
        // SAFETY: as in pock_session_train_step.
        let (x, y) = unsafe { (std::slice::from_raw_parts(inputs, inputs_len), std::slice::from_raw_parts(targets, targets_len)) };
        let value = s.train_step(x, Targets::Values(y))?;
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { loss.write_unaligned(value) };
        Ok(())
    })
}

/// Runs the model on a batch (`input_len` floats) and writes `output_len` floats to `outputs`
/// (logits for a classifier). BatchNorm uses its running statistics; dropout is off. The two
/// buffers must not overlap.
///
/// # Safety
/// `inputs` is NULL or valid for `inputs_len` reads, `outputs` NULL or valid for `outputs_len`
/// writes; `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn pock_session_infer(
    session: *mut PockSession,
    inputs: *const f32,
    inputs_len: usize,
    outputs: *mut f32,
    outputs_len: usize,
) -> PockStatus {
    with_session(session, |s| {
        let sizes = sizes_of(s);
        let input_len = single_float_input(s)?;
        let read = check_buffer(inputs, inputs_len, input_len, "inputs", "batch × sample size floats")?;
        let written = check_buffer(outputs.cast_const(), outputs_len, sizes.output_len, "outputs", "batch × output size floats")?;
        if overlaps(read, written) {
            return Err(Failure::new(PockStatus::InvalidArgument, "inputs and outputs overlap; pass separate buffers"));
        }
        // SAFETY: checked: not NULL, aligned, of the given lengths (valid for them by the
        // caller's contract) and disjoint, so the shared and the mutable slice do not alias.
        let (x, out) = unsafe { (std::slice::from_raw_parts(inputs, inputs_len), std::slice::from_raw_parts_mut(outputs, outputs_len)) };
        s.infer(x, out)?;
        Ok(())
    })
}

/// Saves weights, optimizer state, statistics, counters and the learning rate to `path`,
/// atomically (a temporary file in the same directory, fsynced, renamed over `path`): a crash
/// leaves the old checkpoint or the new one, never a torn file. `pock train --resume`,
/// `pock eval --checkpoint` and [`pock_session_resume`] read it.
///
/// # Safety
/// `session` is NULL or a live session; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pock_session_save(session: *mut PockSession, path: *const c_char) -> PockStatus {
    with_session(session, |s| {
        // SAFETY: by the caller's contract.
        let path = unsafe { path_arg(path, "path") }?;
        s.save(&path)?;
        Ok(())
    })
}

/// Restores a checkpoint written by [`pock_session_save`] (or `pock train`) for this plan, so
/// training continues where it stopped. All or nothing: on failure the session is unchanged.
///
/// # Safety
/// As [`pock_session_save`].
#[no_mangle]
pub unsafe extern "C" fn pock_session_resume(session: *mut PockSession, path: *const c_char) -> PockStatus {
    with_session(session, |s| {
        // SAFETY: by the caller's contract.
        let path = unsafe { path_arg(path, "path") }?;
        s.resume(&path)?;
        Ok(())
    })
}

/// Sets the learning rate of the following steps (the plan's is the default; checkpoints save
/// it). Must be finite and not negative.
///
/// # Safety
/// `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn pock_session_set_learning_rate(session: *mut PockSession, learning_rate: f32) -> PockStatus {
    with_session(session, |s| {
        if !learning_rate.is_finite() || learning_rate < 0.0 {
            return Err(Failure::new(PockStatus::InvalidArgument, format!("learning rate {learning_rate} is not a finite value ≥ 0")));
        }
        s.set_learning_rate(learning_rate);
        Ok(())
    })
}

/// Writes the number of optimizer steps taken (restored by a resume) to `*out`.
///
/// # Safety
/// `session` is NULL or a live session; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pock_session_optimizer_steps(session: *mut PockSession, out: *mut u64) -> PockStatus {
    with_session(session, |s| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked not NULL; writable by the caller's contract.
        unsafe { out.write_unaligned(s.optimizer_steps()) };
        Ok(())
    })
}

/// A copy of the calling thread's last error message, to free with [`pock_string_free`]; NULL
/// when no call on this thread has failed. A successful call leaves the message in place, so
/// check statuses, not this.
#[no_mangle]
pub extern "C" fn pock_last_error() -> *mut c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().clone()).map_or(std::ptr::null_mut(), CString::into_raw)).unwrap_or(std::ptr::null_mut())
}

/// Copies the calling thread's last error message into `buffer` (`capacity` bytes), truncated
/// to fit and always NUL-terminated when `capacity > 0`. Returns the message's full length in
/// bytes (without the NUL; 0 when there is none), so a caller can tell it was truncated, as with
/// `snprintf`. `buffer` may be NULL when `capacity` is 0, to ask for the length.
///
/// # Safety
/// `buffer` is NULL or valid for `capacity` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn pock_last_error_copy(buffer: *mut c_char, capacity: usize) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            let message = e.as_ref().map_or(&[][..], |m| m.as_bytes());
            if !buffer.is_null() && capacity > 0 {
                let n = message.len().min(capacity - 1);
                // SAFETY: `n + 1 <= capacity` bytes, writable by the caller's contract; the
                // message is our own allocation, so the two do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(message.as_ptr(), buffer.cast::<u8>(), n);
                    buffer.add(n).write(0);
                }
            }
            message.len()
        })
    }))
    .unwrap_or(0)
}

/// Frees a string returned by [`pock_last_error`]. NULL does nothing.
///
/// # Safety
/// `s` is NULL or a string from [`pock_last_error`] not yet freed.
#[no_mangle]
pub unsafe extern "C" fn pock_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: from CString::into_raw in pock_last_error, freed once by the caller's contract.
        drop(unsafe { CString::from_raw(s) });
    });
}
