//! Dataset files: round trips, every malformed-file error, checks against a plan, and the
//! batching helpers. Files are real `.npz` archives written into a fresh temporary directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, ArrayD, IxDyn, ShapeBuilder};
use ndarray_npy::{NpzReader, NpzWriter};
use pock::data::{eval_batch, eval_batches, write_predictions, DataError, Dataset, TargetKind, Targets};

/// A directory under the system temp dir, emptied on creation and removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pock-test-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}

fn images(n: usize) -> Dataset {
    Dataset {
        x: ramp(n * 3 * 4 * 4),
        x_shape: vec![n, 3, 4, 4],
        y: Some(Targets::Labels((0..n as i64).map(|i| i % 5).collect())),
        inputs: Vec::new(),
    }
}

/// Writes an npz with the given arrays (each an `ArrayD` of some element type).
macro_rules! npz {
    ($path:expr, $($name:literal => $array:expr),* $(,)?) => {{
        let mut w = NpzWriter::new(File::create(&$path).unwrap());
        $( w.add_array($name, &$array).unwrap(); )*
        w.finish().unwrap();
    }};
}

fn arr<T: Clone>(shape: &[usize], data: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
}

fn load_err(path: &Path) -> DataError {
    match Dataset::load_npz(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

fn assert_mentions(e: &DataError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message lacks '{p}': {msg}");
    }
}

// ---- round trips ----

#[test]
fn round_trip_with_labels_values_and_without_targets() {
    let dir = TempDir::new("round-trip");
    let labelled = images(7);
    let regression =
        Dataset { x: ramp(12), x_shape: vec![4, 3], y: Some(Targets::Values { data: ramp(8), shape: vec![4, 2] }), inputs: Vec::new() };
    let unlabelled = Dataset { x: ramp(12), x_shape: vec![6, 2], y: None, inputs: Vec::new() };
    for (i, ds) in [labelled, regression, unlabelled].into_iter().enumerate() {
        let path = dir.path(&format!("d{i}.npz"));
        ds.save_npz(&path).unwrap();
        assert_eq!(Dataset::load_npz(&path).unwrap(), ds);
    }
}

#[test]
fn narrow_integer_labels_are_widened() {
    let dir = TempDir::new("widen");
    let x = arr(&[4, 2], ramp(8));
    let p32 = dir.path("int32.npz");
    npz!(p32, "x" => x, "y" => arr(&[4], vec![3i32, 0, 2, 1]));
    assert_eq!(Dataset::load_npz(&p32).unwrap().y, Some(Targets::Labels(vec![3, 0, 2, 1])));
    let p8 = dir.path("uint8.npz");
    npz!(p8, "x" => x, "y" => arr(&[4], vec![9u8, 0, 255, 1]));
    assert_eq!(Dataset::load_npz(&p8).unwrap().y, Some(Targets::Labels(vec![9, 0, 255, 1])));
}

#[test]
fn fortran_ordered_arrays_load_in_logical_order() {
    let dir = TempDir::new("fortran");
    let path = dir.path("f.npz");
    let x = Array2::from_shape_vec((2, 3).f(), vec![0f32, 3., 1., 4., 2., 5.]).unwrap();
    assert!(!x.is_standard_layout());
    npz!(path, "x" => x);
    assert_eq!(Dataset::load_npz(&path).unwrap().x, vec![0., 1., 2., 3., 4., 5.]);
}

#[test]
fn other_arrays_are_ignored() {
    let dir = TempDir::new("extra");
    let path = dir.path("extra.npz");
    npz!(path, "meta" => arr(&[2], vec![1.0f64, 2.0]), "x" => arr(&[2, 1], vec![1f32, 2.]));
    let ds = Dataset::load_npz(&path).unwrap();
    assert_eq!((ds.len(), ds.sample_shape(), &ds.y), (2, &[1usize][..], &None));
}

#[test]
fn predictions_are_written_as_y() {
    let dir = TempDir::new("pred");
    let path = dir.path("pred.npz");
    write_predictions(&path, &ramp(6), &[3, 2]).unwrap();
    let mut r = NpzReader::new(File::open(&path).unwrap()).unwrap();
    let y: ArrayD<f32> = r.by_name("y").unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.into_raw_vec_and_offset().0, ramp(6));
    let e = write_predictions(&path, &ramp(5), &[3, 2]).unwrap_err();
    assert!(matches!(e, DataError::Write { .. }), "{e}");
}

// ---- malformed files ----

#[test]
fn float64_inputs_name_dtype_and_fix() {
    let dir = TempDir::new("f64");
    let path = dir.path("train.npz");
    npz!(path, "x" => arr(&[2, 2], vec![1.0f64, 2., 3., 4.]), "y" => arr(&[2], vec![0i64, 1]));
    let e = load_err(&path);
    assert!(matches!(e, DataError::WrongDType { .. }), "{e:?}");
    assert_mentions(&e, &["x in", "train.npz", "is float64", "expects float32", "x.astype(np.float32)"]);
}

#[test]
fn uint8_images_get_a_scaling_hint() {
    let dir = TempDir::new("u8");
    let path = dir.path("img.npz");
    npz!(path, "x" => arr(&[1, 2], vec![0u8, 255]));
    assert_mentions(&load_err(&path), &["uint8", "/ 255"]);
}

#[test]
fn float64_and_unsigned_64_targets_are_rejected() {
    let dir = TempDir::new("y-dtype");
    let x = arr(&[2, 1], vec![0f32, 1.]);
    let p = dir.path("yf64.npz");
    npz!(p, "x" => x, "y" => arr(&[2], vec![0.5f64, 1.5]));
    let e = load_err(&p);
    assert!(matches!(e, DataError::WrongDType { .. }), "{e:?}");
    assert_mentions(&e, &["y in", "float64", "int64 class labels or float32", "astype"]);
    let p = dir.path("yu64.npz");
    npz!(p, "x" => x, "y" => arr(&[2], vec![0u64, 1]));
    assert_mentions(&load_err(&p), &["uint64"]);
}

#[test]
fn missing_x_lists_the_arrays_found() {
    let dir = TempDir::new("no-x");
    let path = dir.path("train.npz");
    npz!(path, "a" => arr(&[1], vec![1f32]), "b" => arr(&[1], vec![1f32]));
    let e = load_err(&path);
    assert!(matches!(e, DataError::MissingArray { .. }), "{e:?}");
    assert_mentions(&e, &["train.npz has no array 'x'", "(arrays found: a, b)"]);
}

#[test]
fn row_count_mismatch() {
    let dir = TempDir::new("rows");
    let path = dir.path("train.npz");
    npz!(path, "x" => arr(&[100, 2], ramp(200)), "y" => arr(&[90], vec![0i64; 90]));
    let e = load_err(&path);
    assert!(matches!(e, DataError::RowMismatch { x_rows: 100, y_rows: 90, .. }), "{e:?}");
    assert_mentions(&e, &["y in", "train.npz", "has 90 rows but x has 100"]);
}

#[test]
fn bad_shapes_and_values() {
    let dir = TempDir::new("shapes");
    type WriteFile = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, WriteFile, &str)> = vec![
        ("scalar x", Box::new(|p: &Path| npz!(p, "x" => arr(&[], vec![1f32]))), "leading sample axis"),
        ("no samples", Box::new(|p: &Path| npz!(p, "x" => arr(&[0, 3], Vec::<f32>::new()))), "at least one sample"),
        (
            "2-d labels",
            Box::new(|p: &Path| npz!(p, "x" => arr(&[2, 1], vec![0f32, 1.]), "y" => arr(&[2, 1], vec![0i64, 1]))),
            "y.reshape(-1)",
        ),
    ];
    for (what, write, hint) in cases {
        let path = dir.path("bad.npz");
        write(&path);
        let e = load_err(&path);
        assert!(matches!(e, DataError::WrongShape { .. }), "{what}: {e:?}");
        assert_mentions(&e, &[hint]);
    }
    let path = dir.path("nan.npz");
    npz!(path, "x" => arr(&[3, 2], vec![0f32, 1., 2., f32::NAN, 4., 5.]));
    let e = load_err(&path);
    assert!(matches!(e, DataError::NonFinite { sample: 1, index: 3, .. }), "{e:?}");
}

#[test]
fn missing_file_and_non_zip_files() {
    let dir = TempDir::new("not-zip");
    let e = load_err(&dir.path("absent.npz"));
    assert!(matches!(e, DataError::Open { .. }), "{e:?}");
    assert_mentions(&e, &["absent.npz", "check the path"]);

    for (name, bytes) in [("empty.npz", Vec::new()), ("text.npz", b"x,y\n1,2\n".to_vec()), ("random.npz", pseudo_random_bytes(4096))] {
        let path = dir.path(name);
        std::fs::write(&path, bytes).unwrap();
        let e = load_err(&path);
        assert!(matches!(e, DataError::NotNpz { .. }), "{name}: {e:?}");
        assert_mentions(&e, &[name, "not a valid .npz", "np.savez"]);
    }
}

fn pseudo_random_bytes(n: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new("truncate");
    let good = dir.path("good.npz");
    images(5).save_npz(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.path("cut.npz");
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        assert!(Dataset::load_npz(&path).is_err(), "truncated to {len} of {} bytes, the file still loaded", bytes.len());
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let dir = TempDir::new("flip");
    let good = dir.path("good.npz");
    images(2).save_npz(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.path("flip.npz");
    let mut failures = 0;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        std::fs::write(&path, &b).unwrap();
        // Some bytes (timestamps, padding) do not matter; the rest must give an error, not a panic.
        match Dataset::load_npz(&path) {
            Ok(ds) => assert_eq!(ds.x.len(), ds.x_shape.iter().product::<usize>()),
            Err(_) => failures += 1,
        }
    }
    assert!(failures > bytes.len() / 2, "only {failures} of {} flips were detected", bytes.len());
}

/// An `.npy` file with a hand-written header (the shape may lie about the data that follows).
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes a stored zip entry with a correct checksum, so only the `.npy` content is wrong.
fn zip_with(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(File::create(path).unwrap());
    for (name, bytes) in entries {
        z.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn headers_that_lie_about_the_data_are_caught_before_allocation() {
    let dir = TempDir::new("lie");
    let path = dir.path("lie.npz");
    let data: Vec<u8> = ramp(6).iter().flat_map(|v| v.to_le_bytes()).collect();
    for (shape, expected) in [
        ("(1000000000000, 1000000)", "needs 4000000000000000000 bytes"),
        ("(100000000000000000000, 3)", "bad .npy header"),
        ("(4000000000000000000, 4000000000000000000)", "more than fits in memory"),
        ("(2, 4)", "needs 32 bytes, but 24 bytes follow"),
        ("(2, 2)", "needs 16 bytes, but 24 bytes follow"),
    ] {
        zip_with(&path, &[("x.npy", npy_bytes("<f4", shape, &data))]);
        let e = load_err(&path);
        assert!(matches!(e, DataError::Corrupt { .. }), "{shape}: {e:?}");
        assert_mentions(&e, &["x in", "lie.npz", "damaged or truncated", expected]);
    }
    zip_with(&path, &[("x.npy", b"not an npy file at all".to_vec())]);
    assert_mentions(&load_err(&path), &["bad .npy header"]);
    // A big-endian float32 array is fine.
    let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    zip_with(&path, &[("x.npy", npy_bytes(">f4", "(2,)", &be))]);
    assert_eq!(Dataset::load_npz(&path).unwrap().x, vec![1.5, -2.0]);
}

// ---- checks against a plan ----

#[test]
fn check_sample_shape() {
    let ds = Dataset { x: vec![0.0; 2 * 3 * 32 * 32], x_shape: vec![2, 3, 32, 32], y: None, inputs: Vec::new() };
    let e = ds.check(&[1, 28, 28], None).unwrap_err();
    assert!(matches!(e, DataError::SampleShape { .. }), "{e:?}");
    assert_mentions(&e, &["x has sample shape [3, 32, 32] but the plan expects [1, 28, 28]"]);
    let flat = Dataset { x: vec![0.0; 2 * 784], x_shape: vec![2, 784], y: None, inputs: Vec::new() };
    assert_mentions(&flat.check(&[1, 28, 28], None).unwrap_err(), &["x.reshape(-1, 1, 28, 28)"]);
    assert!(flat.check(&[784], None).is_ok(), "inference needs no targets");
    let e = flat.check(&[784], None).and_then(|_| flat.check(&[10], None)).unwrap_err().in_file(Path::new("infer.npz"));
    assert_mentions(&e, &["infer.npz: x has sample shape [784]"]);
}

#[test]
fn check_targets() {
    let labelled = images(6);
    assert!(labelled.check(&[3, 4, 4], Some(&TargetKind::Labels { classes: 5 })).is_ok());
    let e = labelled.check(&[3, 4, 4], Some(&TargetKind::Labels { classes: 4 })).unwrap_err();
    assert!(matches!(e, DataError::LabelOutOfRange { index: 4, label: 4, classes: 4 }), "{e:?}");
    assert_mentions(&e, &["y[4] = 4 is outside [0, 4)"]);
    let mut negative = images(3);
    negative.y = Some(Targets::Labels(vec![0, -1, 9]));
    assert!(matches!(
        negative.check(&[3, 4, 4], Some(&TargetKind::Labels { classes: 5 })),
        Err(DataError::LabelOutOfRange { index: 1, label: -1, .. })
    ));

    let e = labelled.check(&[3, 4, 4], Some(&TargetKind::Values { shape: vec![1] })).unwrap_err();
    assert!(matches!(e, DataError::TargetKind { .. }), "{e:?}");
    assert_mentions(&e, &["integer class labels", "float32", "astype(np.float32)"]);

    let values =
        Dataset { x: ramp(4), x_shape: vec![4, 1], y: Some(Targets::Values { data: ramp(4), shape: vec![4] }), inputs: Vec::new() };
    assert!(values.check(&[1], Some(&TargetKind::Values { shape: vec![1] })).is_ok(), "[N] targets fit one output");
    let e = values.check(&[1], Some(&TargetKind::Values { shape: vec![2] })).unwrap_err();
    assert!(matches!(e, DataError::TargetShape { .. }), "{e:?}");
    let e = values.check(&[1], Some(&TargetKind::Labels { classes: 3 })).unwrap_err();
    assert_mentions(&e, &["y holds float32 values but the plan expects int64 class labels", "astype(np.int64)"]);

    let unlabelled = Dataset { y: None, ..values };
    let e = unlabelled.check(&[1], Some(&TargetKind::Labels { classes: 3 })).unwrap_err();
    assert!(matches!(e, DataError::MissingTargets { .. }), "{e:?}");
}

// ---- order and batching ----

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    let ds = Dataset { x: vec![0.0; 1000], x_shape: vec![1000, 1], y: None, inputs: Vec::new() };
    let a = ds.epoch_order(1, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, ds.epoch_order(1, 0));
    assert_ne!(a, ds.epoch_order(1, 1), "epochs differ");
    assert_ne!(a, ds.epoch_order(2, 0), "seeds differ");
    assert_ne!(a, (0..1000).collect::<Vec<_>>(), "shuffled");
    // A fair shuffle puts the first element anywhere: over many seeds its position averages
    // near the middle.
    let mean = (0..400u64).map(|s| ds.epoch_order(s, 0).iter().position(|&i| i == 0).unwrap() as f64).sum::<f64>() / 400.0;
    assert!((mean - 499.5).abs() < 60.0, "mean position of row 0: {mean}");
    let empty = Dataset { x: vec![], x_shape: vec![0, 1], y: None, inputs: Vec::new() };
    assert!(empty.epoch_order(0, 0).is_empty());
}

#[test]
fn gather_copies_rows() {
    let ds = images(4);
    let per = 3 * 4 * 4;
    let mut out = vec![0.0; 2 * per];
    ds.gather_x(&[3, 1], &mut out);
    assert_eq!(out[..per], ds.x[3 * per..4 * per]);
    assert_eq!(out[per..], ds.x[per..2 * per]);
    let mut labels = [0i64; 3];
    ds.gather_labels(&[2, 2, 0], &mut labels);
    assert_eq!(labels, [2, 2, 0]);

    let values =
        Dataset { x: ramp(3), x_shape: vec![3, 1], y: Some(Targets::Values { data: ramp(6), shape: vec![3, 2] }), inputs: Vec::new() };
    let mut out = [0.0; 4];
    values.gather_values(&[2, 0], &mut out);
    assert_eq!(out, [ramp(6)[4], ramp(6)[5], ramp(6)[0], ramp(6)[1]]);
}

#[test]
#[should_panic(expected = "gather x")]
fn gather_with_a_wrong_buffer_size_panics() {
    images(2).gather_x(&[0], &mut [0.0; 3]);
}

#[test]
fn batching_policy() {
    let ds = images(10);
    assert_eq!(ds.train_batches(4), 2, "the last partial batch is dropped");
    assert_eq!(eval_batches(10, 4), 3);
    assert_eq!(eval_batch(10, 4, 1), (vec![4, 5, 6, 7], 4));
    assert_eq!(eval_batch(10, 4, 2), (vec![8, 9, 9, 9], 2), "padding repeats the last row");
    assert_eq!(eval_batch(2, 4, 0), (vec![0, 1, 1, 1], 2));
    assert_eq!(eval_batches(8, 4), 2);
}

#[test]
fn labels_survive_a_numpy_style_int64_file() {
    let dir = TempDir::new("int64");
    let path = dir.path("a.npz");
    npz!(path, "x" => Array2::<f32>::zeros((3, 2)), "y" => Array1::from(vec![2i64, 0, 1]));
    let ds = Dataset::load_npz(&path).unwrap();
    assert_eq!(ds.y, Some(Targets::Labels(vec![2, 0, 1])));
    assert_eq!(ds.sample_shape(), &[2]);
}

#[test]
fn compressed_archives_ask_for_np_savez() {
    let dir = TempDir::new("deflate");
    let path = dir.path("small.npz");
    images(2).save_npz(&path).unwrap();
    // Mark every entry as deflated in the local and central headers, as np.savez_compressed
    // does; the check happens before any decompression is attempted.
    let mut bytes = std::fs::read(&path).unwrap();
    for i in 0..bytes.len().saturating_sub(12) {
        match &bytes[i..i + 4] {
            b"PK\x03\x04" => bytes[i + 8..i + 10].copy_from_slice(&8u16.to_le_bytes()),
            b"PK\x01\x02" => bytes[i + 10..i + 12].copy_from_slice(&8u16.to_le_bytes()),
            _ => {}
        }
    }
    std::fs::write(&path, bytes).unwrap();
    let e = load_err(&path);
    assert!(matches!(e, DataError::Compressed { .. }), "{e:?}");
    assert_mentions(&e, &["x in", "small.npz", "np.savez instead of np.savez_compressed"]);
}
