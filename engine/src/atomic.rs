//! Writing files so that a crash, a kill or a power cut at any moment leaves either the old file
//! or the complete new one, never a torn or empty one.
//!
//! The bytes go to a temporary file in the destination's directory (a rename is only atomic
//! within one file system), the file is fsynced, renamed over the destination, and the directory
//! is fsynced so the rename itself survives a power cut. A symlink is followed to its target, so
//! the link stays a link; anything that is not a regular file (a device such as `/dev/full`, a
//! directory, a pipe) is refused rather than replaced.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Symlinks followed before giving up (the limit Linux applies to path resolution).
const MAX_LINKS: usize = 40;

/// The file a write to `path` lands in: `path` with every symlink followed, even a dangling one
/// (writing through a dangling link creates its target, as `open` would).
pub fn resolve_target(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("more than {MAX_LINKS} levels of symbolic links")))
}

/// Checks that `path` can be written by [`write_file`] without side effects: it resolves to a
/// regular file or to nothing yet, and its directory exists and accepts new files (tested by
/// creating and removing an empty temporary file, which also catches read-only file systems).
/// Returns the resolved target.
pub fn check_writable(path: &Path) -> io::Result<PathBuf> {
    let target = resolve_target(path)?;
    refuse_special(&target)?;
    let dir = directory_of(&target);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("directory {} does not exist; create it first", dir.display())))
        }
        Err(e) => return Err(e),
    }
    let (probe, file) = create_temp(&target)?;
    drop(file);
    std::fs::remove_file(&probe)?;
    Ok(target)
}

fn refuse_special(target: &Path) -> io::Result<()> {
    match std::fs::metadata(target) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => {
            let what = if m.is_dir() { "a directory" } else { "not a regular file (a device, pipe or socket)" };
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is {what}; give the path of a regular file to write", target.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn directory_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates a new, uniquely named temporary file next to `target`.
fn create_temp(target: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let dir = directory_of(target);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes a file atomically: `write` fills a temporary file, which is then fsynced and renamed
/// over `path` (followed through symlinks), and the directory is fsynced. On any failure the
/// temporary file is removed and `path` is left as it was.
pub fn write_file(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let target = resolve_target(path)?;
    refuse_special(&target)?;
    let (tmp, mut file) = create_temp(&target)?;
    let result = write(&mut file).and_then(|_| file.sync_all()).and_then(|_| {
        drop(file);
        std::fs::rename(&tmp, &target)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is only durable once the directory entry is on disk.
    File::open(directory_of(&target))?.sync_all()?;
    remove_stale_temporaries(&target);
    Ok(())
}

/// Removes temporary files for `target` left by writers that were killed mid-write (`kill -9`,
/// power loss): those whose process no longer exists. Linux only, where `/proc` tells; a file
/// of a live process (even an unrelated one that reuses the id) is left alone.
fn remove_stale_temporaries(target: &Path) {
    #[cfg(target_os = "linux")]
    {
        let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
        let prefix = format!(".{name}.");
        let Ok(entries) = std::fs::read_dir(directory_of(target)) else { return };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
            let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = target;
}

/// [`write_file`] for bytes already in memory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, |f| io::Write::write_all(f, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pock-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = dir("replace");
        let p = d.join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        write_bytes(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        assert!(leftovers(&d).is_empty());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let d = dir("fail");
        let p = d.join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let e = write_file(&p, |f| {
            io::Write::write_all(f, b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk on fire"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_a_symlink_to_its_target() {
        let d = dir("link");
        let target = d.join("real.bin");
        std::fs::write(&target, b"old").unwrap();
        let link = d.join("link.bin");
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        write_bytes(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_special_files_and_missing_directories() {
        let e = write_bytes(Path::new("/dev/null"), b"x").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&std::fs::metadata("/dev/null").unwrap().file_type()), "still a device");
        let d = dir("special");
        let e = check_writable(&d).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = check_writable(&d.join("no/such/dir/out.bin")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        check_writable(&d.join("fine.bin")).unwrap();
        assert!(!d.join("fine.bin").exists());
        assert!(leftovers(&d).is_empty());
    }
}
