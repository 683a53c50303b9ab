//! Datasets: loading `.npz` files, checking them against a plan, and batching.
//!
//! # File format
//!
//! A dataset is a NumPy `.npz` archive written by `np.savez(path, x=inputs, y=targets)`:
//!
//! - `x` (required): `float32`, shape `[N, ...]`, one row per sample.
//! - `y` (optional; needed to train and evaluate, not to infer): either integer class labels of
//!   shape `[N]` (`int64`; narrower integer types are widened) or `float32` regression targets of
//!   shape `[N, ...]`.
//!
//! A plan with several data inputs, or one that is not float32 (token ids, attention masks), reads
//! one array per input instead of `x`, named as the input, each of the input's dtype (`float32`,
//! `int64`, narrower integers widened, or `bool`) and shape `[N, ...]` ([`Dataset::load_npz_inputs`]);
//! its `y` may hold one label per position (`[N, T]` int64 for a language model's cross-entropy,
//! where the plan's ignored label, -100 by default, marks positions without one).
//!
//! Other arrays in the archive are ignored. Archives written by `np.savez_compressed` are
//! rejected with a message saying to use `np.savez`, because pock reads stored (uncompressed)
//! entries only. Nothing read from the file is trusted: every entry's declared size, dtype and
//! shape is checked against the bytes actually present before anything is allocated from it,
//! so a truncated or corrupted file is an error, never a crash.
//!
//! # Batching policy
//!
//! A plan is compiled for one batch size, so every program run sees exactly `batch` rows.
//!
//! - Training uses full batches only. Each epoch visits the rows in the order of
//!   [`Dataset::epoch_order`] (a permutation that depends only on the seed and the epoch number)
//!   and drops the last `len % batch` rows of that order; the caller warns about them. Because
//!   the order changes each epoch, different rows are dropped each time.
//! - Evaluation and inference cover every row once, in file order. The last batch is padded to
//!   full size by repeating the last real row ([`eval_batch`]); the outputs and losses of padded
//!   rows are discarded. Eval programs use frozen BatchNorm statistics, so padding does not
//!   change the results of the real rows.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{NpzWriter, ReadNpyExt, ReadableElement};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

/// The targets of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class labels, one per sample.
    Labels(Vec<i64>),
    /// Regression targets, `shape` = `[N, ...]`.
    Values { data: Vec<f32>, shape: Vec<usize> },
    /// Class labels per position, `shape` = `[N, ...]` of rank 2 or more (a language model's
    /// `[N, T]`), read only for plans whose labels have that shape.
    PositionLabels { data: Vec<i64>, shape: Vec<usize> },
}

/// One named data input's values for every sample, `shape` = `[N, ...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: ColumnValues,
}

/// A column's values in the input's own dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl ColumnValues {
    /// Zeros of `dtype` (`float32`, `int64` or `bool`).
    pub fn zeros(dtype: pock_engine::plan::DType, len: usize) -> Option<ColumnValues> {
        use pock_engine::plan::DType;
        Some(match dtype {
            DType::F32 => ColumnValues::F32(vec![0.0; len]),
            DType::I64 => ColumnValues::I64(vec![0; len]),
            DType::Bool => ColumnValues::Bool(vec![false; len]),
            _ => return None,
        })
    }

    /// The values as a Session input.
    pub fn as_input(&self) -> pock_engine::Input<'_> {
        match self {
            ColumnValues::F32(v) => pock_engine::Input::F32(v),
            ColumnValues::I64(v) => pock_engine::Input::I64(v),
            ColumnValues::Bool(v) => pock_engine::Input::Bool(v),
        }
    }
}

/// A data input a plan expects: its name, dtype and shape per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: pock_engine::plan::DType,
    pub sample_shape: Vec<usize>,
}

/// Samples in memory, row-major with the sample axis first.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The one float input `x` of a zoo-style file (empty when `inputs` holds the inputs).
    pub x: Vec<f32>,
    /// `[N, ...]` (`[N]` when `inputs` holds the inputs).
    pub x_shape: Vec<usize>,
    pub y: Option<Targets>,
    /// The named inputs of a plan with several (or non-float) inputs, in the plan's order; empty
    /// for a file read through `x`.
    pub inputs: Vec<Column>,
}

/// What targets a plan expects, to check a dataset against.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetKind {
    Labels {
        classes: usize,
    },
    /// Float targets of this shape per sample (without the batch axis).
    Values {
        shape: Vec<usize>,
    },
    /// int64 labels of this shape per sample (cross-entropy over the logits' last axis); a
    /// label equal to `ignore_index` marks a position without one.
    PositionLabels {
        classes: usize,
        shape: Vec<usize>,
        ignore_index: i64,
    },
}

/// Why a dataset could not be read, written or used. Each message names the file and array
/// involved, what was expected and what was found, and what to do about it. Errors from
/// [`Dataset::check`] do not know the file; callers add it with [`DataError::in_file`].
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot open data file {}: {source}; check the path", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid .npz file ({detail}); write datasets with numpy: np.savez(\"{}\", x=inputs, y=targets)", path.display(), path.display())]
    NotNpz { path: PathBuf, detail: String },
    #[error("{} has no array '{array}' (arrays found: {}); save the model input as '{array}': np.savez(path, {array}=values, y=targets)", path.display(), list_or_none(found))]
    MissingArray { path: PathBuf, array: String, found: Vec<String> },
    #[error("{array} in {} is compressed ({method}); pock reads uncompressed archives only: save with np.savez instead of np.savez_compressed", path.display())]
    Compressed { path: PathBuf, array: String, method: String },
    #[error("{array} in {} is damaged or truncated ({detail}); write the file again", path.display())]
    Corrupt { path: PathBuf, array: String, detail: String },
    #[error("{array} in {} is {actual}; pock expects {expected} ({fix})", path.display())]
    WrongDType { path: PathBuf, array: String, actual: String, expected: String, fix: String },
    #[error("{array} in {} has shape {shape:?}; {expected}", path.display())]
    WrongShape { path: PathBuf, array: String, shape: Vec<usize>, expected: String },
    #[error("y in {} has {y_rows} rows but x has {x_rows}; every sample needs exactly one target", path.display())]
    RowMismatch { path: PathBuf, x_rows: usize, y_rows: usize },
    #[error("{array} in {} holds {value} at sample {sample} (flat index {index}); replace or drop non-finite values before training", path.display())]
    NonFinite { path: PathBuf, array: String, sample: usize, index: usize, value: f32 },
    #[error("x has sample shape {actual:?} but the plan expects {expected:?}; {hint}")]
    SampleShape { actual: Vec<usize>, expected: Vec<usize>, hint: String },
    #[error("the data has no targets (array 'y') but the plan expects {expected} to train or evaluate; add y to the file")]
    MissingTargets { expected: String },
    #[error("y holds {actual} but the plan expects {expected} ({fix})")]
    TargetKind { actual: String, expected: String, fix: String },
    #[error("y has sample shape {actual:?} but the plan expects {expected:?} per sample; reshape the targets or recompile the model with matching outputs")]
    TargetShape { actual: Vec<usize>, expected: Vec<usize> },
    #[error("{array} in {} has {rows} samples but {first} has {first_rows}; every array needs one row per sample", path.display())]
    InputRows { path: PathBuf, array: String, rows: usize, first: String, first_rows: usize },
    #[error("{array} has sample shape {actual:?} but the plan's input '{array}' expects {expected:?}; reshape it or recompile the model for this shape")]
    InputShape { array: String, actual: Vec<usize>, expected: Vec<usize> },
    #[error("label y[{index}] = {label} is outside [0, {classes}) (the plan has {classes} classes); fix the labels or recompile the model with more classes")]
    LabelOutOfRange { index: usize, label: i64, classes: usize },
    #[error("cannot write {}: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<DataError> },
}

impl DataError {
    /// Names the file an error from [`Dataset::check`] is about.
    pub fn in_file(self, path: &Path) -> DataError {
        DataError::InFile { path: path.to_path_buf(), source: Box::new(self) }
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl Dataset {
    /// Loads `x` and, if present, `y` from an `.npz` file (see the module documentation for the
    /// format and the checks made).
    pub fn load_npz(path: &Path) -> Result<Dataset, DataError> {
        let (mut zip, file_len) = open_zip(path)?;
        let mut archive = Archive { path, file_len, zip: &mut zip };

        let x = archive.read("x")?.ok_or_else(|| DataError::MissingArray {
            path: path.to_path_buf(),
            array: "x".into(),
            found: archive.names(),
        })?;
        if x.dtype != "float32" {
            let fix = match x.dtype.as_str() {
                "float64" | "float16" => "use x.astype(np.float32)".to_string(),
                d if d.starts_with("int") || d.starts_with("uint") || d == "bool" => {
                    "use x.astype(np.float32), scaled as the model expects, e.g. x.astype(np.float32) / 255 for 8-bit images".to_string()
                }
                _ => "convert the inputs to a float32 array".to_string(),
            };
            return Err(DataError::WrongDType {
                path: path.to_path_buf(),
                array: "x".into(),
                actual: x.dtype,
                expected: "float32".into(),
                fix,
            });
        }
        if x.shape.is_empty() || x.shape[0] == 0 || x.shape[1..].contains(&0) {
            let expected =
                "x needs a leading sample axis and at least one sample with at least one value, shape [N, ...] with N >= 1".to_string();
            return Err(DataError::WrongShape { path: path.to_path_buf(), array: "x".into(), shape: x.shape, expected });
        }
        let x_shape = x.shape.clone();
        let x_data: Vec<f32> = archive.decode(&x)?;
        check_finite(path, "x", &x_data, &x_shape)?;

        let y = match archive.read("y")? {
            None => None,
            Some(y) => {
                if y.shape.is_empty() {
                    let expected = "targets need a leading sample axis: shape [N] for labels, [N, ...] for values".to_string();
                    return Err(DataError::WrongShape { path: path.to_path_buf(), array: "y".into(), shape: y.shape, expected });
                }
                if y.shape[0] != x_shape[0] {
                    return Err(DataError::RowMismatch { path: path.to_path_buf(), x_rows: x_shape[0], y_rows: y.shape[0] });
                }
                Some(archive.targets(y, false)?)
            }
        };
        Ok(Dataset { x: x_data, x_shape, y, inputs: Vec::new() })
    }

    /// Loads one array per plan input, named as the input (a plan with one input also finds it
    /// under `x`), each of the input's dtype, and `y` if present; labels may have one value per
    /// position (`[N, T]`). Every array must have the same number of samples.
    pub fn load_npz_inputs(path: &Path, wanted: &[InputSpec]) -> Result<Dataset, DataError> {
        use pock_engine::plan::DType;
        let (mut zip, file_len) = open_zip(path)?;
        let mut archive = Archive { path, file_len, zip: &mut zip };
        let mut inputs = Vec::with_capacity(wanted.len());
        for spec in wanted {
            let mut entry = archive.read(&spec.name)?;
            if entry.is_none() && wanted.len() == 1 {
                entry = archive.read("x")?;
            }
            let Some(entry) = entry else {
                return Err(DataError::MissingArray { path: path.to_path_buf(), array: spec.name.clone(), found: archive.names() });
            };
            if entry.shape.is_empty() || entry.shape[0] == 0 {
                let expected = format!("'{}' needs a leading sample axis and at least one sample, shape [N, ...] with N >= 1", spec.name);
                return Err(DataError::WrongShape { path: path.to_path_buf(), array: spec.name.clone(), shape: entry.shape, expected });
            }
            let wrong = |fix: &str| DataError::WrongDType {
                path: path.to_path_buf(),
                array: spec.name.clone(),
                actual: entry.dtype.clone(),
                expected: spec.dtype.name().to_string(),
                fix: fix.to_string(),
            };
            let values = match (spec.dtype, entry.dtype.as_str()) {
                (DType::F32, "float32") => {
                    let v: Vec<f32> = archive.decode(&entry)?;
                    check_finite(path, &spec.name, &v, &entry.shape)?;
                    ColumnValues::F32(v)
                }
                (DType::I64, "int64") => ColumnValues::I64(archive.decode(&entry)?),
                (DType::I64, "int32") => ColumnValues::I64(archive.decode::<i32>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::I64, "int16") => ColumnValues::I64(archive.decode::<i16>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::I64, "int8") => ColumnValues::I64(archive.decode::<i8>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::I64, "uint32") => ColumnValues::I64(archive.decode::<u32>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::I64, "uint16") => ColumnValues::I64(archive.decode::<u16>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::I64, "uint8") => ColumnValues::I64(archive.decode::<u8>(&entry)?.into_iter().map(i64::from).collect()),
                (DType::Bool, "bool") => ColumnValues::Bool(archive.decode(&entry)?),
                (DType::F32, _) => return Err(wrong("use .astype(np.float32)")),
                (DType::I64, _) => return Err(wrong("use .astype(np.int64)")),
                (DType::Bool, _) => return Err(wrong("use .astype(bool)")),
                (other, _) => return Err(wrong(&format!("pock does not feed {} inputs", other.name()))),
            };
            if let Some(first) = inputs.first().map(|c: &Column| (c.name.clone(), c.shape[0])).filter(|f| f.1 != entry.shape[0]) {
                let (first, first_rows) = first;
                return Err(DataError::InputRows {
                    path: path.to_path_buf(),
                    array: spec.name.clone(),
                    rows: entry.shape[0],
                    first,
                    first_rows,
                });
            }
            inputs.push(Column { name: spec.name.clone(), shape: entry.shape, values });
        }
        let rows = inputs.first().map_or(0, |c| c.shape[0]);
        let y = match archive.read("y")? {
            None => None,
            Some(y) => {
                if y.shape.first() != Some(&rows) {
                    let first = inputs.first().map_or_else(String::new, |c| c.name.clone());
                    let rows_y = y.shape.first().copied().unwrap_or(0);
                    return Err(DataError::InputRows {
                        path: path.to_path_buf(),
                        array: "y".into(),
                        rows: rows_y,
                        first,
                        first_rows: rows,
                    });
                }
                Some(archive.targets(y, true)?)
            }
        };
        Ok(Dataset { x: Vec::new(), x_shape: vec![rows], y, inputs })
    }

    /// Checks each named input's shape per sample against the plan's.
    pub fn check_inputs(&self, wanted: &[InputSpec]) -> Result<(), DataError> {
        for (column, spec) in self.inputs.iter().zip(wanted) {
            if column.shape[1..] != spec.sample_shape[..] {
                return Err(DataError::InputShape {
                    array: spec.name.clone(),
                    actual: column.shape[1..].to_vec(),
                    expected: spec.sample_shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// Copies input `column`'s values of the samples `indices` into `out` (of the same dtype).
    ///
    /// # Panics
    ///
    /// On a dtype or size mismatch, as in [`Dataset::gather_x`].
    pub fn gather_column(&self, column: usize, indices: &[usize], out: &mut ColumnValues) {
        let c = &self.inputs[column];
        let per: usize = c.shape[1..].iter().product();
        match (&c.values, out) {
            (ColumnValues::F32(src), ColumnValues::F32(dst)) => gather_rows(src, per, indices, dst, &c.name),
            (ColumnValues::I64(src), ColumnValues::I64(dst)) => gather_rows(src, per, indices, dst, &c.name),
            (ColumnValues::Bool(src), ColumnValues::Bool(dst)) => gather_rows(src, per, indices, dst, &c.name),
            _ => panic!("gather {}: the buffer's dtype differs from the column's", c.name),
        }
    }

    /// Writes `x` and `y` as an uncompressed `.npz` that [`Dataset::load_npz`] and NumPy read,
    /// atomically (see [`pock_engine::atomic`]).
    pub fn save_npz(&self, path: &Path) -> Result<(), DataError> {
        let write_err = |detail: String| DataError::Write { path: path.to_path_buf(), detail };
        let x = ArrayViewD::from_shape(IxDyn(&self.x_shape), &self.x)
            .map_err(|_| write_err(format!("x holds {} values, not shape {:?}", self.x.len(), self.x_shape)))?;
        let y = match &self.y {
            None => None,
            Some(Targets::Labels(labels)) => {
                Some(NpzArray::Labels(ArrayViewD::from_shape(IxDyn(&[labels.len()]), labels).map_err(|e| write_err(e.to_string()))?))
            }
            Some(Targets::Values { data, shape }) => Some(NpzArray::Values(
                ArrayViewD::from_shape(IxDyn(shape), data)
                    .map_err(|_| write_err(format!("y holds {} values, not shape {shape:?}", data.len())))?,
            )),
            Some(Targets::PositionLabels { data, shape }) => Some(NpzArray::Labels(
                ArrayViewD::from_shape(IxDyn(shape), data)
                    .map_err(|_| write_err(format!("y holds {} labels, not shape {shape:?}", data.len())))?,
            )),
        };
        write_npz(path, |npz| {
            npz.add_array("x", &x)?;
            match &y {
                None => Ok(()),
                Some(NpzArray::Labels(y)) => npz.add_array("y", y),
                Some(NpzArray::Values(y)) => npz.add_array("y", y),
            }
        })
        .map_err(write_err)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x_shape.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample (`x_shape` without the sample axis).
    pub fn sample_shape(&self) -> &[usize] {
        self.x_shape.get(1..).unwrap_or(&[])
    }

    fn sample_numel(&self) -> usize {
        self.sample_shape().iter().product()
    }

    /// Checks the data against what a plan expects: the input shape per sample and, when
    /// `target` is given (train, eval), the kind, shape and range of the targets.
    ///
    /// Regression targets match when their per-sample shapes agree up to axes of size 1, so
    /// `y` of shape `[N]` fits a model with one output (`[N, 1]`).
    pub fn check(&self, sample_shape: &[usize], target: Option<&TargetKind>) -> Result<(), DataError> {
        if self.inputs.is_empty() && self.sample_shape() != sample_shape {
            let actual = self.sample_shape().to_vec();
            let per_sample: usize = sample_shape.iter().product();
            let hint = if per_sample == self.sample_numel() {
                let dims: Vec<String> = sample_shape.iter().map(|d| d.to_string()).collect();
                format!("the number of values per sample agrees, so reshape the inputs: x.reshape(-1, {})", dims.join(", "))
            } else {
                "resize the inputs or recompile the model for this input shape".to_string()
            };
            return Err(DataError::SampleShape { actual, expected: sample_shape.to_vec(), hint });
        }
        let Some(target) = target else { return Ok(()) };
        match (target, &self.y) {
            (TargetKind::PositionLabels { classes, shape: expected, ignore_index }, Some(Targets::PositionLabels { data, shape })) => {
                if shape[1..] != expected[..] {
                    return Err(DataError::TargetShape { actual: shape[1..].to_vec(), expected: expected.clone() });
                }
                match data.iter().position(|&l| l != *ignore_index && (l < 0 || l >= *classes as i64)) {
                    Some(index) => Err(DataError::LabelOutOfRange { index, label: data[index], classes: *classes }),
                    None => Ok(()),
                }
            }
            (TargetKind::PositionLabels { classes, shape, ignore_index }, None) => Err(DataError::MissingTargets {
                expected: format!("int64 labels of shape {shape:?} per sample in [0, {classes}) or {ignore_index} (ignored)"),
            }),
            (TargetKind::PositionLabels { shape, .. }, Some(Targets::Labels(_))) => {
                Err(DataError::TargetShape { actual: vec![], expected: shape.clone() })
            }
            (TargetKind::PositionLabels { shape, .. }, Some(Targets::Values { .. })) => Err(DataError::TargetKind {
                actual: "float32 values".into(),
                expected: format!("int64 labels of shape {shape:?} per sample"),
                fix: "use y.astype(np.int64) if they are class indices".into(),
            }),
            (TargetKind::Labels { .. } | TargetKind::Values { .. }, Some(Targets::PositionLabels { shape, .. })) => {
                Err(DataError::TargetKind {
                    actual: format!("int64 labels of shape {:?} per sample", &shape[1..]),
                    expected: match target {
                        TargetKind::Labels { classes } => format!("one int64 class label in [0, {classes}) per sample"),
                        _ => "float32 targets".into(),
                    },
                    fix: "reshape or convert y to what the plan was compiled for".into(),
                })
            }
            (TargetKind::Labels { classes }, None) => {
                Err(DataError::MissingTargets { expected: format!("int64 class labels in [0, {classes})") })
            }
            (TargetKind::Values { shape }, None) => {
                Err(DataError::MissingTargets { expected: format!("float32 targets of shape {shape:?} per sample") })
            }
            (TargetKind::Labels { classes }, Some(Targets::Values { .. })) => Err(DataError::TargetKind {
                actual: "float32 values".into(),
                expected: format!("int64 class labels in [0, {classes})"),
                fix: "use y.astype(np.int64) if they are class indices, or compile the model with task=regression".into(),
            }),
            (TargetKind::Values { shape }, Some(Targets::Labels(_))) => Err(DataError::TargetKind {
                actual: "integer class labels".into(),
                expected: format!("float32 targets of shape {shape:?} per sample"),
                fix: "use y.astype(np.float32) if they are regression targets, or compile a classifier".into(),
            }),
            (TargetKind::Labels { classes }, Some(Targets::Labels(labels))) => {
                match labels.iter().position(|&l| l < 0 || l >= *classes as i64) {
                    Some(index) => Err(DataError::LabelOutOfRange { index, label: labels[index], classes: *classes }),
                    None => Ok(()),
                }
            }
            (TargetKind::Values { shape: expected }, Some(Targets::Values { shape, .. })) => {
                let actual = shape.get(1..).unwrap_or(&[]);
                let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
                if squeeze(actual) != squeeze(expected) {
                    return Err(DataError::TargetShape { actual: actual.to_vec(), expected: expected.clone() });
                }
                Ok(())
            }
        }
    }

    /// The order in which training visits the samples in `epoch`: a Fisher–Yates shuffle driven
    /// by a ChaCha8 stream keyed by `(seed, epoch)`, so any epoch can be reproduced on its own
    /// (a resumed run sees the same order as an uninterrupted one).
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&epoch.to_le_bytes());
        key[16..27].copy_from_slice(b"epoch_order");
        let mut rng = ChaCha8Rng::from_seed(key);
        let mut order: Vec<usize> = (0..self.len()).collect();
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        order
    }

    /// Copies the inputs of the samples `indices` into `out`, one after another.
    ///
    /// # Panics
    ///
    /// If `out` does not hold exactly `indices.len()` samples or an index is out of range; both
    /// are bugs in the caller, which sizes batches from the plan after [`Dataset::check`].
    pub fn gather_x(&self, indices: &[usize], out: &mut [f32]) {
        gather_rows(&self.x, self.sample_numel(), indices, out, "x");
    }

    /// Copies the labels of the samples `indices` into `out`.
    ///
    /// # Panics
    ///
    /// If the dataset has no labels (call [`Dataset::check`] first), or on a size mismatch as in
    /// [`Dataset::gather_x`].
    pub fn gather_labels(&self, indices: &[usize], out: &mut [i64]) {
        match &self.y {
            Some(Targets::Labels(labels)) => gather_rows(labels, 1, indices, out, "labels"),
            Some(Targets::PositionLabels { data, shape }) => gather_rows(data, shape[1..].iter().product(), indices, out, "labels"),
            _ => panic!("gather_labels on a dataset without class labels"),
        }
    }

    /// Copies the regression targets of the samples `indices` into `out`.
    ///
    /// # Panics
    ///
    /// If the dataset has no float targets (call [`Dataset::check`] first), or on a size
    /// mismatch as in [`Dataset::gather_x`].
    pub fn gather_values(&self, indices: &[usize], out: &mut [f32]) {
        let Some(Targets::Values { data, shape }) = &self.y else { panic!("gather_values on a dataset without float targets") };
        let per: usize = shape.get(1..).unwrap_or(&[]).iter().product();
        gather_rows(data, per, indices, out, "values");
    }

    /// Full training batches per epoch; the remaining `len % batch` rows are dropped.
    pub fn train_batches(&self, batch: usize) -> usize {
        self.len().checked_div(batch).unwrap_or(0)
    }
}

/// Opens an `.npz` archive; returns it and the file's length.
fn open_zip(path: &Path) -> Result<(ZipArchive<BufReader<File>>, u64), DataError> {
    let file = File::open(path).map_err(|source| DataError::Open { path: path.to_path_buf(), source })?;
    let file_len = file.metadata().map_err(|source| DataError::Read { path: path.to_path_buf(), source })?.len();
    let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| match e {
        ZipError::Io(source) if source.kind() != std::io::ErrorKind::UnexpectedEof => DataError::Read { path: path.to_path_buf(), source },
        other => DataError::NotNpz { path: path.to_path_buf(), detail: other.to_string() },
    })?;
    Ok((zip, file_len))
}

fn gather_rows<T: Copy>(src: &[T], per: usize, indices: &[usize], out: &mut [T], what: &str) {
    assert_eq!(
        out.len(),
        indices.len() * per,
        "gather {what}: output holds {} values, {} samples need {}",
        out.len(),
        indices.len(),
        indices.len() * per
    );
    if per == 0 {
        return;
    }
    for (dst, &i) in out.chunks_exact_mut(per).zip(indices) {
        dst.copy_from_slice(&src[i * per..(i + 1) * per]);
    }
}

/// Number of eval/infer batches needed to cover `len` rows (the last one padded).
pub fn eval_batches(len: usize, batch: usize) -> usize {
    len.div_ceil(batch.max(1))
}

/// The rows of eval/infer batch `index`: the real rows `index * batch ..` in file order, then
/// the last real row repeated up to `batch` rows. Returns the indices and how many are real;
/// the outputs of the others are discarded.
pub fn eval_batch(len: usize, batch: usize, index: usize) -> (Vec<usize>, usize) {
    let start = index * batch;
    let end = (start + batch).min(len);
    let mut rows: Vec<usize> = (start..end).collect();
    let real = rows.len();
    let pad = end.saturating_sub(1);
    rows.resize(batch, pad);
    (rows, real)
}

/// Writes model outputs (`y`, row-major, `shape` with the sample axis first) as an `.npz` file
/// with one array `y`.
pub fn write_predictions(path: &Path, y: &[f32], shape: &[usize]) -> Result<(), DataError> {
    let write_err = |detail: String| DataError::Write { path: path.to_path_buf(), detail };
    let view =
        ArrayViewD::from_shape(IxDyn(shape), y).map_err(|_| write_err(format!("{} predictions do not fill shape {shape:?}", y.len())))?;
    write_npz(path, |npz| npz.add_array("y", &view)).map_err(write_err)
}

enum NpzArray<'a> {
    Labels(ArrayViewD<'a, i64>),
    Values(ArrayViewD<'a, f32>),
}

type FileNpz<'f> = NpzWriter<BufWriter<&'f mut File>>;

/// Writes an uncompressed `.npz` atomically; `add` adds its arrays.
fn write_npz(path: &Path, add: impl FnOnce(&mut FileNpz<'_>) -> Result<(), ndarray_npy::WriteNpzError>) -> Result<(), String> {
    let mut failure = None;
    let result = pock_engine::atomic::write_file(path, |file| {
        let mut npz = NpzWriter::new(BufWriter::new(file));
        let written = add(&mut npz).and_then(|_| npz.finish());
        match written {
            Ok(mut w) => w.flush(),
            Err(e) => {
                failure = Some(e.to_string());
                Err(std::io::Error::other("npz"))
            }
        }
    });
    result.map_err(|e| failure.unwrap_or_else(|| e.to_string()))
}

fn check_finite(path: &Path, array: &str, data: &[f32], shape: &[usize]) -> Result<(), DataError> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => {
            let per: usize = shape.get(1..).unwrap_or(&[]).iter().product();
            Err(DataError::NonFinite {
                path: path.to_path_buf(),
                array: array.into(),
                sample: index / per.max(1),
                index,
                value: data[index],
            })
        }
    }
}

/// One `.npy` entry of the archive, read into memory and checked: its header parses and its
/// data is exactly as long as the header's dtype and shape say.
struct NpyEntry {
    name: String,
    /// NumPy's name for the dtype (`float32`), or the raw descriptor for unusual ones.
    dtype: String,
    shape: Vec<usize>,
    /// The whole `.npy` file, header included.
    bytes: Vec<u8>,
}

struct Archive<'a> {
    path: &'a Path,
    file_len: u64,
    zip: &'a mut ZipArchive<BufReader<File>>,
}

impl Archive<'_> {
    /// Array names as NumPy reports them (without `.npy`).
    fn names(&self) -> Vec<String> {
        self.zip.file_names().map(|n| n.strip_suffix(".npy").unwrap_or(n).to_string()).collect()
    }

    fn corrupt(&self, array: &str, detail: impl Into<String>) -> DataError {
        DataError::Corrupt { path: self.path.to_path_buf(), array: array.into(), detail: detail.into() }
    }

    /// Reads array `name`, or `None` if the archive has no such array.
    fn read(&mut self, name: &str) -> Result<Option<NpyEntry>, DataError> {
        let Some(index) = self.zip.index_for_name(&format!("{name}.npy")).or_else(|| self.zip.index_for_name(name)) else {
            return Ok(None);
        };
        // Look at the entry's metadata before decompressing anything.
        let meta = self.zip.by_index_raw(index).map(|raw| (raw.compression(), raw.size())).map_err(|e| e.to_string());
        let (method, size) = meta.map_err(|e| self.corrupt(name, e))?;
        if method != CompressionMethod::Stored {
            return Err(DataError::Compressed { path: self.path.to_path_buf(), array: name.into(), method: method.to_string() });
        }
        // A stored entry's bytes lie in the file, so a larger declared size is a lie.
        if size > self.file_len {
            return Err(self.corrupt(name, format!("the archive declares {size} bytes for it but the file has {}", self.file_len)));
        }
        let mut bytes = Vec::new();
        let read = match self.zip.by_index(index) {
            Ok(mut entry) => entry.read_to_end(&mut bytes).map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        read.map_err(|e| self.corrupt(name, e))?;

        let mut cursor: &[u8] = &bytes;
        let header = Header::from_reader(&mut cursor).map_err(|e| self.corrupt(name, format!("bad .npy header: {e}")))?;
        let data_len = cursor.len();
        let descr = header.type_descriptor.as_string().cloned().unwrap_or_else(|| format!("structured dtype {}", header.type_descriptor));
        let (dtype, item_size) = numpy_dtype(&descr);
        if let Some(item_size) = item_size {
            let need = header.shape.iter().try_fold(item_size, |acc, &d| acc.checked_mul(d));
            if need != Some(data_len) {
                let need = need.map_or("more than fits in memory".to_string(), |n| format!("{n} bytes"));
                return Err(self.corrupt(
                    name,
                    format!("its header says {dtype} of shape {:?}, which needs {need}, but {data_len} bytes follow", header.shape),
                ));
            }
        }
        Ok(Some(NpyEntry { name: name.into(), dtype, shape: header.shape, bytes }))
    }

    /// Decodes an entry whose dtype and size [`Archive::read`] has checked.
    fn decode<T: ReadableElement + Copy>(&self, entry: &NpyEntry) -> Result<Vec<T>, DataError> {
        let array = ArrayD::<T>::read_npy(&entry.bytes[..]).map_err(|e| self.corrupt(&entry.name, e.to_string()))?;
        // Fortran-ordered files decode to a column-major array; iterate in logical order.
        Ok(if array.is_standard_layout() { array.into_raw_vec_and_offset().0 } else { array.iter().copied().collect() })
    }

    /// `y` as labels or values; `positions` allows labels of rank 2 or more (one per position).
    fn targets(&self, y: NpyEntry, positions: bool) -> Result<Targets, DataError> {
        let path = self.path.to_path_buf();
        let labels = |values: Vec<i64>| -> Result<Targets, DataError> {
            if positions && y.shape.len() >= 2 {
                return Ok(Targets::PositionLabels { data: values, shape: y.shape.clone() });
            }
            if y.shape.len() != 1 {
                let expected =
                    "integer class labels must have shape [N] (use y.reshape(-1)); regression targets must be float32".to_string();
                return Err(DataError::WrongShape { path: path.clone(), array: "y".into(), shape: y.shape.clone(), expected });
            }
            Ok(Targets::Labels(values))
        };
        match y.dtype.as_str() {
            "float32" => {
                let data: Vec<f32> = self.decode(&y)?;
                check_finite(self.path, "y", &data, &y.shape)?;
                Ok(Targets::Values { data, shape: y.shape })
            }
            "int64" => labels(self.decode::<i64>(&y)?),
            "int32" => labels(self.decode::<i32>(&y)?.into_iter().map(i64::from).collect()),
            "int16" => labels(self.decode::<i16>(&y)?.into_iter().map(i64::from).collect()),
            "int8" => labels(self.decode::<i8>(&y)?.into_iter().map(i64::from).collect()),
            "uint32" => labels(self.decode::<u32>(&y)?.into_iter().map(i64::from).collect()),
            "uint16" => labels(self.decode::<u16>(&y)?.into_iter().map(i64::from).collect()),
            "uint8" => labels(self.decode::<u8>(&y)?.into_iter().map(i64::from).collect()),
            other => Err(DataError::WrongDType {
                path,
                array: "y".into(),
                actual: other.to_string(),
                expected: "int64 class labels or float32 regression targets".into(),
                fix: "use y.astype(np.int64) for labels or y.astype(np.float32) for regression targets".into(),
            }),
        }
    }
}

/// NumPy's dtype name and item size for a descriptor such as `<f4`; unknown descriptors keep
/// their raw text and have no known size.
fn numpy_dtype(descr: &str) -> (String, Option<usize>) {
    let code = descr.strip_prefix(['<', '>', '|', '=']).unwrap_or(descr);
    let known = match code {
        "f2" => Some(("float16", 2)),
        "f4" => Some(("float32", 4)),
        "f8" => Some(("float64", 8)),
        "i1" => Some(("int8", 1)),
        "i2" => Some(("int16", 2)),
        "i4" => Some(("int32", 4)),
        "i8" => Some(("int64", 8)),
        "u1" => Some(("uint8", 1)),
        "u2" => Some(("uint16", 2)),
        "u4" => Some(("uint32", 4)),
        "u8" => Some(("uint64", 8)),
        "b1" => Some(("bool", 1)),
        _ => None,
    };
    match known {
        Some((name, size)) => (name.to_string(), Some(size)),
        None => (format!("dtype '{descr}'"), None),
    }
}
