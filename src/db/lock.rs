//! One owner per data directory: an exclusive lock taken when a store opens and held for as
//! long as it is open (as bbolt, which etcd and Nomad use, does with flock). The kernel drops
//! the lock with the process, however it ends, so a crash never leaves a directory locked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lock file in a data directory; it holds the owner's pid, for the message of the next
/// process that tries.
pub const LOCK_FILE: &str = "cube.lock";

/// An exclusive lock on a data directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock on `dir`, or say who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, String> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid if pid == std::process::id().to_string() => {
                        return Err(
                            "the directory is already open in this process; clone the existing Store instead of opening it again"
                                .into(),
                        );
                    }
                    pid => format!("another process (pid {pid})"),
                };
                return Err(format!(
                    "the directory is in use by {holder}; stop that process, or give this one another --data-dir"
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        // Ours now: say so for whoever tries next.
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{pid}"));
        if let Err(e) = written {
            log::warn!("could not write the pid to {}: {e}", path.display());
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DirLock::acquire(dir.path()).expect("the first lock");
        let err = DirLock::acquire(dir.path()).expect_err("a second owner");
        assert!(err.contains("already open in this process"), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).expect("free again once dropped");
    }
}
