//! `cube snapshot save FILE` and `cube snapshot restore FILE`: backups of the manager's store,
//! as `nomad operator snapshot` makes them. A save asks the running manager for a consistent,
//! compacted copy (`POST /snapshot`); a restore puts one back into a data directory while no
//! manager holds it, keeping the store it replaces.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, Client};
use crate::actors::manager::{TABLES, TASKS};
use crate::db::Store;
use crate::db::lock::DirLock;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Save a consistent copy of the running manager's store to FILE.
    Save {
        /// Where to write the snapshot (replaced if it exists).
        file: PathBuf,
    },
    /// Put a snapshot back as the store of a manager that is not running.
    Restore {
        /// A snapshot written by `cube snapshot save`.
        file: PathBuf,
        /// The manager's data directory; its current store is kept beside it.
        #[arg(long, default_value = "cube-data/manager")]
        data_dir: PathBuf,
    },
}

pub async fn run(client: &Client, args: SnapshotArgs) -> Result<(), CliError> {
    match args.action {
        SnapshotAction::Save { file } => {
            let bytes = client.post_raw("/snapshot").await?;
            write_durably(&file, &bytes)
                .map_err(|e| format!("cannot write the snapshot to {}: {e}", file.display()))?;
            println!(
                "snapshot of {} bytes saved to {}",
                bytes.len(),
                file.display()
            );
        }
        SnapshotAction::Restore { file, data_dir } => {
            let (tasks, kept) = restore(&file, &data_dir)?;
            println!(
                "restored {tasks} task(s) into {}{}",
                data_dir.display(),
                kept.map(|k| format!("; the store it replaced is kept as {}", k.display()))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Write `bytes` to `file` through a temporary file and a rename, synced: a crash leaves the
/// old file or the new one, never half of one.
fn write_durably(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// Restore `file` into `data_dir`: check it opens as a manager's store, then swap it in while
/// holding the directory's lock. Returns the tasks it holds and where the replaced store went.
pub fn restore(file: &Path, data_dir: &Path) -> Result<(usize, Option<PathBuf>), String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let _lock = DirLock::acquire(data_dir).map_err(|e| {
        format!(
            "cannot restore into {}: {e} (stop the manager first)",
            data_dir.display()
        )
    })?;
    let staging = data_dir.join(format!("restore-{}", uuid::Uuid::new_v4().simple()));
    let result = stage_and_swap(file, data_dir, &staging);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn stage_and_swap(
    file: &Path,
    data_dir: &Path,
    staging: &Path,
) -> Result<(usize, Option<PathBuf>), String> {
    std::fs::create_dir_all(staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let staged = staging.join("data.mdb");
    std::fs::copy(file, &staged)
        .map_err(|e| format!("cannot read the snapshot {}: {e}", file.display()))?;
    let tasks = {
        let store = Store::open(staging, TABLES).map_err(|e| {
            format!(
                "{} is not a snapshot of a manager's store: {e}",
                file.display()
            )
        })?;
        TASKS
            .scan(&store)
            .map_err(|e| format!("{} holds unreadable tasks: {e}", file.display()))?
            .len()
    };
    let current = data_dir.join("data.mdb");
    let kept = if current.exists() {
        let kept = data_dir.join(format!(
            "data.mdb.before-restore-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::rename(&current, &kept)
            .map_err(|e| format!("cannot move the current store aside: {e}"))?;
        Some(kept)
    } else {
        None
    };
    // LMDB's reader table belongs to the store it replaces; nobody has it open (the lock).
    let _ = std::fs::remove_file(data_dir.join("lock.mdb"));
    std::fs::rename(&staged, &current)
        .map_err(|e| format!("cannot put the snapshot in place: {e}"))?;
    let dir = std::fs::File::open(data_dir).and_then(|d| d.sync_all());
    if let Err(e) = dir {
        log::warn!("could not sync {}: {e}", data_dir.display());
    }
    Ok((tasks, kept))
}
