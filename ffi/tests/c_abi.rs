//! The C ABI's checks, called from Rust as C would call them: NULL and misaligned pointers,
//! wrong lengths, overlapping buffers, the wrong kind of targets, missing and damaged files, and
//! the last error as a copy or into a short buffer. Each refusal leaves a message saying what to
//! do, and the session stays usable after it.

mod common;

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};

use pock_ffi::c_api::*;

fn c_path(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    let p = pock_last_error();
    assert!(!p.is_null(), "a failed call left no message");
    // SAFETY: a NUL-terminated string from pock_last_error, freed once below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { pock_string_free(p) };
    s
}

fn open(plan: &Path) -> *mut PockSession {
    let mut session = null_mut();
    let status = unsafe { pock_session_open(c_path(plan).as_ptr(), null(), &mut session) };
    assert_eq!(status, PockStatus::Ok, "{}", last_error());
    session
}

#[test]
fn every_pointer_and_length_is_checked() {
    let dir = common::workdir("c-abi-checks");
    let plan = dir.join("mlp.plan");
    common::write_mlp_plan(&plan);
    let s = open(&plan);
    let mut sizes = PockSizes::default();
    assert_eq!(unsafe { pock_session_sizes(s, &mut sizes) }, PockStatus::Ok);
    assert_eq!((sizes.batch, sizes.input_count, sizes.input_len, sizes.target_len, sizes.output_len), (16, 1, 128, 16, 64));
    assert!(sizes.targets_are_labels);

    let x = vec![0.5f32; 129];
    let y = [1i64; 16];
    let mut out = vec![0f32; 64];
    let mut loss = 0f32;
    unsafe {
        assert_eq!(pock_session_train_step(null_mut(), x.as_ptr(), 128, y.as_ptr(), 16, &mut loss), PockStatus::NullArgument);
        assert_eq!(last_error(), "session is NULL; pass a valid pointer");
        assert_eq!(pock_session_train_step(s, null(), 128, y.as_ptr(), 16, &mut loss), PockStatus::NullArgument);
        assert!(last_error().starts_with("inputs is NULL"));
        assert_eq!(pock_session_train_step(s, x.as_ptr(), 128, y.as_ptr(), 16, null_mut()), PockStatus::NullArgument);
        assert!(last_error().starts_with("loss is NULL"));
        assert_eq!(pock_session_train_step(s, x.as_ptr(), 129, y.as_ptr(), 16, &mut loss), PockStatus::SizeMismatch);
        assert_eq!(last_error(), "inputs has 129 elements, but this plan needs 128 (batch × sample size floats); see pock_session_sizes");
        assert_eq!(pock_session_train_step(s, x.as_ptr(), 128, y.as_ptr(), 15, &mut loss), PockStatus::SizeMismatch);
        assert!(last_error().starts_with("labels has 15 elements, but this plan needs 16"));
        // A float buffer one byte off its alignment.
        let misaligned = (x.as_ptr() as *const u8).add(1) as *const f32;
        assert_eq!(pock_session_train_step(s, misaligned, 128, y.as_ptr(), 16, &mut loss), PockStatus::InvalidArgument);
        assert!(last_error().contains("not aligned to 4 bytes"));
        assert_eq!(pock_session_train_step_values(s, x.as_ptr(), 128, x.as_ptr(), 16, &mut loss), PockStatus::Input);
        assert!(last_error().contains("call pock_session_train_step"));
        // Outputs overlapping the inputs would alias a shared and a mutable slice.
        let mut both = vec![0f32; 192];
        let p = both.as_mut_ptr();
        assert_eq!(pock_session_infer(s, p, 128, p.add(100), 64), PockStatus::InvalidArgument);
        assert_eq!(last_error(), "inputs and outputs overlap; pass separate buffers");
        assert_eq!(pock_session_infer(s, x.as_ptr(), 128, out.as_mut_ptr(), 63), PockStatus::SizeMismatch);
        assert_eq!(pock_session_set_learning_rate(s, f32::NAN), PockStatus::InvalidArgument);
        assert_eq!(pock_session_sizes(s, null_mut()), PockStatus::NullArgument);
        assert_eq!(pock_session_optimizer_steps(s, null_mut()), PockStatus::NullArgument);
        assert_eq!(pock_session_save(s, null()), PockStatus::NullArgument);
        assert_eq!(pock_session_save(s, c"".as_ptr()), PockStatus::InvalidArgument);
        assert!(last_error().contains("empty string"));
        let missing_dir = c_path(&dir.join("no/such/dir/ckpt.safetensors"));
        assert_eq!(pock_session_save(s, missing_dir.as_ptr()), PockStatus::Checkpoint);
        assert_eq!(pock_session_resume(s, c_path(&dir.join("absent.safetensors")).as_ptr()), PockStatus::Checkpoint);

        // None of the refusals touched the session: a step after them is its first.
        assert_eq!(pock_session_train_step(s, x.as_ptr(), 128, y.as_ptr(), 16, &mut loss), PockStatus::Ok);
        assert!(loss.is_finite() && loss > 0.0);
        let mut steps = 7u64;
        assert_eq!(pock_session_optimizer_steps(s, &mut steps), PockStatus::Ok);
        assert_eq!(steps, 1);
        assert_eq!(pock_session_infer(s, x.as_ptr(), 128, out.as_mut_ptr(), 64), PockStatus::Ok);
        assert!(out.iter().all(|v| v.is_finite()));
        pock_session_free(s);
        pock_session_free(null_mut());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_reports_missing_and_damaged_plans() {
    let dir = common::workdir("c-abi-open");
    let mut session: *mut PockSession = std::ptr::NonNull::dangling().as_ptr();
    unsafe {
        assert_eq!(pock_session_open(null(), null(), &mut session), PockStatus::NullArgument);
        assert!(session.is_null(), "a failed open leaves *out NULL");
        assert_eq!(pock_session_open(c"x".as_ptr(), null(), null_mut()), PockStatus::NullArgument);
        let missing = c_path(&dir.join("missing.plan"));
        assert_eq!(pock_session_open(missing.as_ptr(), null(), &mut session), PockStatus::Open);
        assert!(last_error().contains("cannot open plan"));
        let damaged = dir.join("damaged.plan");
        std::fs::write(&damaged, b"POCK plan? no").unwrap();
        assert_eq!(pock_session_open(c_path(&damaged).as_ptr(), null(), &mut session), PockStatus::Plan);
        assert!(session.is_null());
        let options = PockOptions { threads: 0, ..pock_options_default() };
        let plan = dir.join("mlp.plan");
        common::write_mlp_plan(&plan);
        assert_eq!(pock_session_open(c_path(&plan).as_ptr(), &options, &mut session), PockStatus::InvalidArgument);
        assert_eq!(last_error(), "options.threads is 0; give 1 or more");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn last_error_copies_into_a_short_buffer() {
    let mut session = null_mut();
    let status = unsafe { pock_session_open(c"/nonexistent/dir/p.plan".as_ptr(), null(), &mut session) };
    assert_eq!(status, PockStatus::Open);
    let full = last_error();
    let length = unsafe { pock_last_error_copy(null_mut(), 0) };
    assert_eq!(length, full.len());
    let mut buffer = [0x7f as c_char; 11];
    let length = unsafe { pock_last_error_copy(buffer.as_mut_ptr(), buffer.len()) };
    assert_eq!(length, full.len());
    // SAFETY: pock_last_error_copy NUL-terminates within the buffer.
    let copied = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_str().unwrap();
    assert_eq!(copied, &full[..10]);
    // The message is per thread: another thread has none.
    std::thread::spawn(|| assert!(pock_last_error().is_null())).join().unwrap();
    assert!(unsafe { CStr::from_ptr(pock_version()) }.to_str().unwrap().starts_with("0."));
}
