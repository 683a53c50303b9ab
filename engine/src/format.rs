//! The plan file format.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "POCKPLAN"
//! 8       4     format version (u32 little endian)
//! 12      4     reserved, zero
//! 16      8     description length H (u64 LE)
//! 24      4     CRC-32 of everything after these 32 bytes
//! 28      4     reserved, zero
//! 32      H     description: the postcard-encoded `Plan`, then (when the compiler placed the
//!               plan's nodes) the postcard-encoded `Placement` (`crate::placement`)
//! ...           zero padding to a multiple of 64
//! W       ...   weight section (`plan.weight_bytes` bytes), 64-byte aligned so that a memory map of
//!               the file can be read as f32 in place
//! ```
//!
//! Nothing read from a file is trusted: every length is checked before use, the checksum before
//! decoding, and [`crate::exec::validate`] checks the decoded plan before anything runs.
//!
//! # Keeping old plans meaningful
//!
//! postcard writes an enum as its variant index followed by the variant's fields, so the
//! description's meaning depends on the order of every enum in [`Plan`]. An op is written as two
//! indices, its family in [`crate::ops::Op`] and the op inside its family (`DenseOp::Relu` is
//! `00 04`), then its attributes. The rule:
//! - families and the ops inside a family are append-only: a new one goes at the end of its enum;
//!   none is reordered, removed, or has its attribute fields changed;
//! - anything else that changes the encoding (a reordered or removed variant, a changed field)
//!   bumps [`FORMAT_VERSION`], which makes this engine refuse older plans with a "recompile" message
//!   instead of misreading them.
//!
//! `engine/tests/op_encoding.rs` enforces the first point: it encodes one instance of every op and
//! compares its tag bytes with a checked-in table, so a reordered variant fails the test.

use alloc::string::String;
use alloc::vec::Vec;

use crate::exec::ValidatedPlan;
use crate::plan::{Plan, ALIGN, FORMAT_VERSION};

pub const MAGIC: &[u8; 8] = b"POCKPLAN";
const PREFIX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a pock plan: the file does not start with the pock magic bytes (was it written by `pock compile`?)")]
    BadMagic,
    #[error("the plan was written in format version {found}; this engine reads version {expected}: recompile the model with this version of pock")]
    Version { found: u32, expected: u32 },
    #[error("the plan is truncated: {what} needs {needed} bytes, the file has {available}")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    #[error("the plan is corrupted: checksum {found:08x} does not match the stored {expected:08x}")]
    Checksum { expected: u32, found: u32 },
    #[error("the plan description cannot be decoded ({0}); the file is corrupted or from an incompatible pock")]
    Decode(String),
    #[error("the plan is invalid: {0}")]
    Invalid(String),
}

fn weights_offset(description_len: usize) -> usize {
    (PREFIX + description_len).div_ceil(ALIGN as usize) * ALIGN as usize
}

/// Serialises a plan and its weight section into the bytes of a plan file.
pub fn encode_plan(plan: &Plan, weights: &[u8]) -> Vec<u8> {
    let mut description = postcard::to_allocvec(plan).expect("a plan always serialises");
    if let Some(placement) = &plan.placement {
        description.extend(postcard::to_allocvec(placement).expect("a placement always serialises"));
    }
    let start = weights_offset(description.len());
    let mut out = Vec::with_capacity(start + weights.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(description.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&description);
    out.resize(start, 0);
    out.extend_from_slice(weights);
    let sum = checksum(&out[PREFIX..]);
    out[24..28].copy_from_slice(&sum.to_le_bytes());
    out
}

fn checksum(body: &[u8]) -> u32 {
    crc32fast::hash(body)
}

/// Recomputes the checksum stored in the header of plan-file bytes after they were edited (does
/// nothing to a buffer shorter than the header). Tools that patch plans use it, and the fuzz
/// targets use it so that their mutations reach the decoder and the validator instead of all
/// stopping at the checksum.
pub fn reseal(file: &mut [u8]) {
    if file.len() >= PREFIX {
        let sum = checksum(&file[PREFIX..]);
        file[24..28].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Where the weight section lies in a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightRange {
    pub offset: usize,
    pub len: usize,
}

/// Checks and decodes a plan file. Returns the validated plan and where its weights are in
/// `bytes` (the caller keeps the bytes: a memory map, a `Vec`, or a `static` on a microcontroller).
pub fn decode_plan(bytes: &[u8]) -> Result<(ValidatedPlan, WeightRange), FormatError> {
    let available = bytes.len() as u64;
    if bytes.len() < PREFIX {
        if bytes.len() >= 8 && &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        return Err(FormatError::Truncated { what: "the file header", needed: PREFIX as u64, available });
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version, expected: FORMAT_VERSION });
    }
    let description_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let stored = u32_at(24);
    if description_len > available - PREFIX as u64 {
        let needed = (PREFIX as u64).saturating_add(description_len);
        return Err(FormatError::Truncated { what: "the plan description", needed, available });
    }
    // Cannot truncate or overflow: `description_len` is at most the buffer's length, a `usize`.
    let description = &bytes[PREFIX..PREFIX + description_len as usize];
    let start = weights_offset(description.len());
    if start > bytes.len() {
        return Err(FormatError::Truncated { what: "the weight section", needed: start as u64, available });
    }
    let weights = &bytes[start..];
    // Decoding untrusted bytes is safe (postcard bounds every read and preallocation), so decode
    // first: a plan that decodes can say how long its weight section must be, which tells a
    // truncated file apart from a corrupted one.
    let decoded = postcard::take_from_bytes::<Plan>(description).and_then(|(mut plan, rest)| {
        if !rest.is_empty() {
            plan.placement = Some(postcard::from_bytes(rest)?);
        }
        Ok(plan)
    });
    let plan: Plan = match decoded {
        Ok(plan) => plan,
        Err(e) => {
            let found = checksum(&bytes[PREFIX..]);
            if found != stored {
                return Err(FormatError::Checksum { expected: stored, found });
            }
            return Err(FormatError::Decode(alloc::format!("{e}")));
        }
    };
    if plan.weight_bytes != weights.len() as u64 {
        // The stored size is untrusted and may be near u64::MAX.
        let needed = (start as u64).saturating_add(plan.weight_bytes);
        return Err(FormatError::Truncated { what: "the weight section", needed, available });
    }
    let found = checksum(&bytes[PREFIX..]);
    if found != stored {
        return Err(FormatError::Checksum { expected: stored, found });
    }
    let plan = ValidatedPlan::new(plan).map_err(|e| FormatError::Invalid(alloc::format!("{e}")))?;
    Ok((plan, WeightRange { offset: start, len: weights.len() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(description_len: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&description_len.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b
    }

    /// A stored length near u64::MAX used to overflow `32 + length` (a panic in debug builds).
    #[test]
    fn huge_description_length_is_a_truncation_error() {
        let e = decode_plan(&header(u64::MAX)).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { needed: u64::MAX, .. }), "{e}");
    }

    /// A decoded weight size near u64::MAX used to overflow `start + weight_bytes`.
    #[test]
    fn huge_weight_size_is_a_truncation_error() {
        let plan = crate::plan::Plan {
            model: "m".into(),
            target: "t".into(),
            producer: "p".into(),
            tensors: Vec::new(),
            programs: Default::default(),
            training: crate::plan::TrainingInfo {
                batch: 1,
                loss: crate::plan::Loss::Mse,
                optimizer: crate::plan::OptimizerKind::Sgd { momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
                learning_rate: 0.1,
                accumulate: 1,
                clip_grad_norm: None,
            },
            arena_bytes: 0,
            persistent_bytes: 0,
            weight_bytes: u64::MAX,
            source: Default::default(),
            folded_norms: Vec::new(),
            arena_bytes_unordered: 0,
            placement: None,
        };
        let e = decode_plan(&encode_plan(&plan, &[])).unwrap_err();
        assert!(matches!(e, FormatError::Truncated { needed: u64::MAX, .. }), "{e}");
    }

    #[test]
    fn reseal_makes_an_edited_file_pass_the_checksum() {
        let mut b = header(4);
        b.extend_from_slice(&[1, 2, 3, 4]);
        reseal(&mut b);
        let stored = u32::from_le_bytes(b[24..28].try_into().unwrap());
        assert_eq!(stored, checksum(&b[PREFIX..]));
        // Too short to hold a header: left alone.
        let mut short = vec![7u8; 10];
        reseal(&mut short);
        assert_eq!(short, vec![7u8; 10]);
    }
}
