//! What a worker reports about its machine, and how it is measured.
//!
//! [`NodeStats`] is the body of a worker's `GET /stats` and what the manager's scheduler learns a
//! node's capacity from. [`StatsSampler`] measures it through sysinfo on a thread of its own, so
//! that reading /proc never blocks an actor.

use std::path::{Path, PathBuf};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// A node's capacity: what the scheduler may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Cores.
    pub cpus: f64,
    /// Bytes of memory.
    pub memory: u64,
    /// Bytes of disk.
    pub disk: u64,
}

/// A worker's report about its machine (`GET /stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The worker's name.
    pub name: String,
    /// Cores.
    pub cpus: f64,
    /// Share of all cores busy since the previous report, 0.0 to 1.0.
    pub cpu_usage: f64,
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_free: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Tasks the worker runs now (Scheduled or Running).
    pub tasks: usize,
}

impl NodeStats {
    /// What the node can hold in all.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            cpus: self.cpus,
            memory: self.memory_total,
            disk: self.disk_total,
        }
    }

    /// Stats of a simulated node: the given capacity, idle.
    pub fn simulated(name: &str, capacity: Capacity, tasks: usize) -> NodeStats {
        NodeStats {
            name: name.to_string(),
            cpus: capacity.cpus,
            cpu_usage: 0.0,
            memory_total: capacity.memory,
            memory_available: capacity.memory,
            disk_total: capacity.disk,
            disk_free: capacity.disk,
            load: [0.0; 3],
            tasks,
        }
    }
}

/// Measures the machine with sysinfo; runs in a `SyncArbiter` because refreshing reads /proc.
pub struct StatsSampler {
    system: System,
    disks: Disks,
    data_dir: PathBuf,
}

impl StatsSampler {
    /// A sampler reporting the disk that holds `data_dir`.
    pub fn new(data_dir: &Path) -> StatsSampler {
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        StatsSampler {
            system: System::new_with_specifics(kind),
            disks: Disks::new_with_refreshed_list(),
            data_dir: data_dir
                .canonicalize()
                .unwrap_or_else(|_| data_dir.to_path_buf()),
        }
    }

    fn sample(&mut self) -> NodeStats {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        // The disk is the one with the longest mount point that contains the data directory.
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|d| self.data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        let (disk_total, disk_free) =
            disk.map_or((0, 0), |d| (d.total_space(), d.available_space()));
        let load = System::load_average();
        NodeStats {
            name: String::new(),
            cpus: self.system.cpus().len().max(1) as f64,
            cpu_usage: f64::from(self.system.global_cpu_usage()) / 100.0,
            memory_total: self.system.total_memory(),
            memory_available: self.system.available_memory(),
            disk_total,
            disk_free,
            load: [load.one, load.five, load.fifteen],
            tasks: 0,
        }
    }
}

impl Actor for StatsSampler {
    type Context = SyncContext<Self>;
}

/// Measure the machine now. `name` and `tasks` are left for the worker to fill in.
#[derive(Message)]
#[rtype(result = "NodeStats")]
pub struct Sample;

impl Handler<Sample> for StatsSampler {
    type Result = MessageResult<Sample>;

    fn handle(&mut self, _: Sample, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.sample())
    }
}
