//! Nodes: what a worker reports about its machine, how it is measured, and the rule that says
//! whether a node is alive.
//!
//! [`NodeStats`] is the body of a worker's `GET /stats` and what the manager's scheduler learns a
//! node's capacity from. [`StatsSampler`] measures it through sysinfo on a thread of its own, so
//! that reading /proc never blocks an actor. [`Liveness`] is the pure rule of node loss: a node
//! silent for the node timeout is Down, counted from the moment the manager started watching it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// The worker's name.
    pub name: String,
    /// Cores.
    pub cpus: f64,
    /// Share of all cores busy since the previous report, 0.0 to 1.0.
    pub cpu_usage: f64,
    /// Bytes of memory in all.
    pub memory_total: u64,
    /// Bytes of memory free for use.
    pub memory_available: u64,
    /// Bytes of the disk that holds the worker's data directory.
    pub disk_total: u64,
    /// Bytes free on that disk.
    pub disk_free: u64,
    /// Load averages over 1, 5 and 15 minutes.
    #[schema(min_items = 3, max_items = 3)]
    pub load: [f64; 3],
    /// Tasks the worker runs now (Scheduled or Running).
    pub tasks: usize,
    /// The worker's labels (`cube worker --label zone=a`), which placement constraints match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Named volumes the worker holds.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Host paths under which the worker lets tasks mount (`--allow-host-path`); none by
    /// default.
    #[serde(default)]
    pub allowed_host_paths: Vec<String>,
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
            labels: BTreeMap::new(),
            volumes: Vec::new(),
            allowed_host_paths: Vec::new(),
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
            labels: BTreeMap::new(),
            volumes: Vec::new(),
            allowed_host_paths: Vec::new(),
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

/// Where a worker stands, as `GET /nodes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum NodeStatus {
    /// Not heard from yet since the manager started watching it.
    Connecting,
    /// Answers, and takes placements.
    Ready,
    /// Silent for the node timeout: its tasks run elsewhere.
    Down,
    /// Its name is bound to another address that still answers.
    Refused,
}

/// Whether a node takes new tasks, as its operator set it (`cube node pause|drain|activate`).
/// Apart from its [`NodeStatus`]: a paused node is still Ready, and keeps what runs there.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Takes no new tasks; what runs there stays.
    Pause,
    /// Takes no new tasks, and every task on it moves elsewhere.
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Availability {
    type Err = String;

    fn from_str(s: &str) -> Result<Availability, String> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!(
                "{s:?} is not an availability; expected active, pause or drain"
            )),
        }
    }
}

/// What a worker says about itself that placement needs beyond its room: its labels, the
/// named volumes it holds and the host paths it lets tasks mount. The manager hears of it from
/// the worker's `/stats`, when it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub allowed_host_paths: Vec<String>,
}

impl NodeStats {
    /// The facts placement needs, from the worker's report.
    pub fn facts(&self) -> NodeFacts {
        NodeFacts {
            labels: self.labels.clone(),
            volumes: self.volumes.clone(),
            allowed_host_paths: self.allowed_host_paths.clone(),
        }
    }
}

/// A change of a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessChange {
    /// It answers (for the first time, or again after being Down).
    Up,
    /// It has been silent for this long, which reached the node timeout.
    Down { silent_for: Duration },
}

/// The rule of node loss, pure: a node heard from is Ready; a node silent for `timeout` is Down,
/// and the silence of a node never heard from counts from when watching began, so a worker dead
/// when the manager starts becomes Down like any other. Time is passed in (monotonic).
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    status: NodeStatus,
    heard_at: Duration,
}

impl Liveness {
    /// Start watching at `now`: Connecting until heard from, Down at `now + timeout` otherwise.
    pub fn new(now: Duration, timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            status: NodeStatus::Connecting,
            heard_at: now,
        }
    }

    pub fn status(&self) -> NodeStatus {
        self.status
    }

    /// The node answered at `now`.
    pub fn heard(&mut self, now: Duration) -> Option<LivenessChange> {
        self.heard_at = self.heard_at.max(now);
        if self.status == NodeStatus::Ready {
            return None;
        }
        self.status = NodeStatus::Ready;
        Some(LivenessChange::Up)
    }

    /// Whether the silence reached the timeout by `now`.
    pub fn check(&mut self, now: Duration) -> Option<LivenessChange> {
        use crate::sim::planted::{Bug, planted};
        if planted(Bug::SilentFromStartNeverDown) && self.status == NodeStatus::Connecting {
            return None;
        }
        let silent_for = now.saturating_sub(self.heard_at);
        if self.status == NodeStatus::Down || silent_for < self.timeout {
            return None;
        }
        self.status = NodeStatus::Down;
        Some(LivenessChange::Down { silent_for })
    }

    /// When [`Liveness::check`] may next find the node Down; `None` while it is Down.
    pub fn deadline(&self) -> Option<Duration> {
        (self.status != NodeStatus::Down).then(|| self.heard_at + self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_node_never_heard_from_is_down_one_timeout_after_watching_began() {
        let mut l = Liveness::new(secs(10.0), TIMEOUT);
        assert_eq!(l.status(), NodeStatus::Connecting);
        assert_eq!(l.deadline(), Some(secs(15.0)));
        assert_eq!(l.check(secs(14.9)), None);
        assert_eq!(
            l.check(secs(15.0)),
            Some(LivenessChange::Down {
                silent_for: TIMEOUT
            })
        );
        assert_eq!(l.check(secs(20.0)), None, "Down once");
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn each_answer_pushes_the_deadline_and_a_return_is_up_again() {
        let mut l = Liveness::new(secs(0.0), TIMEOUT);
        assert_eq!(l.heard(secs(1.0)), Some(LivenessChange::Up));
        assert_eq!(l.heard(secs(4.0)), None);
        assert_eq!(l.check(secs(8.9)), None);
        assert!(matches!(
            l.check(secs(9.0)),
            Some(LivenessChange::Down { .. })
        ));
        assert_eq!(l.heard(secs(30.0)), Some(LivenessChange::Up));
        assert_eq!(l.status(), NodeStatus::Ready);
    }

    #[test]
    fn an_answer_reported_late_never_moves_the_clock_back() {
        let mut l = Liveness::new(secs(0.0), TIMEOUT);
        l.heard(secs(6.0));
        l.heard(secs(2.0));
        assert_eq!(l.deadline(), Some(secs(11.0)));
    }
}

/// Longest node name: a DNS label's length, enough for `<hostname>-<port>`.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` can name a node: 1 to 63 letters, digits, `.`, `_` or `-`, as host names
/// and container labels take them.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a node name has 1 to {MAX_NAME_LEN} characters; this one has {}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "{c:?} cannot be in a node name; expected letters, digits, '.', '_' or '-'"
        )),
        None => Ok(()),
    }
}

/// Whether `address` is a `host:port` a worker can be reached at.
pub fn check_address(address: &str) -> Result<(), String> {
    let expected = "expected host:port, e.g. 10.0.0.2:5556";
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} has no port; {expected}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(format!("{address:?} has no valid host; {expected}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port (1-65535); {expected}")),
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn node_names_and_addresses_are_checked() {
        assert!(check_name("w1").is_ok());
        assert!(check_name("host-5556").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("a/b").unwrap_err().contains("'/'"));
        assert!(check_address("10.0.0.2:5556").is_ok());
        assert!(check_address("[::1]:5556").is_ok());
        assert!(check_address("node.example:1").is_ok());
        assert!(check_address("10.0.0.2").is_err());
        assert!(check_address(":5556").is_err());
        assert!(check_address("h:0").is_err());
        assert!(check_address("h:99999").is_err());
        assert!(check_address("a b:1").is_err());
    }
}
