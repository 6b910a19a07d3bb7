//! Placement policies: which node a task goes to.
//!
//! A [`Policy`] has the shape of Cube's scheduler interface: [`Policy::candidates`] keeps the
//! nodes that can take the task, [`Policy::score`] rates each (lower is better) and
//! [`Policy::pick`] chooses. All of them work on the scheduler's own book of what is allocated
//! on each node, so scores use real fractions rather than a snapshot of the machine's load.
//! Ties break by fewest tasks, then in turn, so tasks without reservations still spread.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::{Availability, Capacity};

/// Scores closer than this are a tie.
const TIE_EPSILON: f64 = 1e-9;
/// E-PVM's base, from Cube (and the paper it follows).
pub const LIEB: f64 = 1.539_600_717_839_002;
/// E-PVM's task-count scale: the count term grows by one `LIEB` factor per this many tasks.
const EPVM_MAX_JOBS: f64 = 4.0;

/// What a task reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: u64,
    /// Bytes.
    pub disk: u64,
}

impl Resources {
    pub fn add(&mut self, r: &Resources) {
        self.cpu += r.cpu;
        self.memory = self.memory.saturating_add(r.memory);
        self.disk = self.disk.saturating_add(r.disk);
    }

    pub fn sub(&mut self, r: &Resources) {
        self.cpu = (self.cpu - r.cpu).max(0.0);
        self.memory = self.memory.saturating_sub(r.memory);
        self.disk = self.disk.saturating_sub(r.disk);
    }
}

/// The scheduler's view of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// Known once the node has reported its stats.
    pub capacity: Option<Capacity>,
    pub allocated: Resources,
    /// Tasks placed and not finished.
    pub tasks: usize,
    /// Reachable and registered (not refused).
    pub ready: bool,
    /// Whether its operator lets it take new tasks; only `active` does.
    #[serde(default)]
    pub availability: Availability,
    /// Left out of the placement under way: it does not meet the task's constraints (set by
    /// the book for one placement at a time, so every policy respects them).
    #[serde(skip)]
    pub excluded: bool,
}

impl NodeView {
    /// Whether `task` fits in what is left; [`NodeView::fits`] says why not.
    pub fn can_take(&self, task: &Resources) -> bool {
        let Some(cap) = self
            .capacity
            .filter(|_| self.takes_tasks() && !self.excluded)
        else {
            return false;
        };
        (task.cpu <= 0.0 || self.allocated.cpu + task.cpu <= cap.cpus + TIE_EPSILON)
            && (task.memory == 0 || self.allocated.memory.saturating_add(task.memory) <= cap.memory)
            && (task.disk == 0 || self.allocated.disk.saturating_add(task.disk) <= cap.disk)
    }

    /// Ready, and active: it takes new tasks.
    pub fn takes_tasks(&self) -> bool {
        self.ready && self.availability == Availability::Active
    }

    /// Whether `task` fits in what is left, with the reason when it does not.
    pub fn fits(&self, task: &Resources) -> Result<(), String> {
        if !self.ready {
            return Err(format!("{} is not ready", self.name));
        }
        match self.availability {
            Availability::Active => {}
            Availability::Pause => return Err(format!("{} is paused", self.name)),
            Availability::Drain => return Err(format!("{} is draining", self.name)),
        }
        let Some(cap) = self.capacity else {
            return Err(format!("{} has not reported its capacity yet", self.name));
        };
        if task.cpu > 0.0 && self.allocated.cpu + task.cpu > cap.cpus + TIE_EPSILON {
            return Err(format!(
                "{} has {:.2} of {:.2} cores free",
                self.name,
                (cap.cpus - self.allocated.cpu).max(0.0),
                cap.cpus
            ));
        }
        if task.memory > 0 && self.allocated.memory.saturating_add(task.memory) > cap.memory {
            return Err(format!(
                "{} has {} of {} bytes of memory free",
                self.name,
                cap.memory.saturating_sub(self.allocated.memory),
                cap.memory
            ));
        }
        if task.disk > 0 && self.allocated.disk.saturating_add(task.disk) > cap.disk {
            return Err(format!(
                "{} has {} of {} bytes of disk free",
                self.name,
                cap.disk.saturating_sub(self.allocated.disk),
                cap.disk
            ));
        }
        Ok(())
    }

    /// Share of the node allocated (mean over cpu and memory, and disk when the node has any),
    /// after adding `extra`.
    pub fn load_with(&self, extra: &Resources) -> f64 {
        let Some(cap) = self.capacity else {
            return 1.0;
        };
        let frac = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
        let cpu = frac(self.allocated.cpu + extra.cpu, cap.cpus);
        let mem = frac(
            (self.allocated.memory + extra.memory) as f64,
            cap.memory as f64,
        );
        if cap.disk > 0 {
            let disk = frac((self.allocated.disk + extra.disk) as f64, cap.disk as f64);
            (cpu + mem + disk) / 3.0
        } else {
            (cpu + mem) / 2.0
        }
    }
}

/// Up to this many nodes, every node is scored for every task: placements are exact.
pub const EXACT_LIMIT: usize = 64;
/// In a larger cluster, this many fitting nodes are drawn at random and scored, plus the node
/// of the previous pick. Scoring a sample instead of every node keeps a placement O(1) in the
/// cluster's size; "power of d choices" keeps spread-like policies within a task or two of
/// perfectly even, and keeping the previous pick lets bin-pack fill one node before the next.
pub const SAMPLE_SIZE: usize = 16;

/// A placement policy.
pub trait Policy: Send {
    fn kind(&self) -> PolicyKind;

    /// Indices of the nodes worth scoring for the task: every node that can take it in a small
    /// cluster, a sample of them in a large one. Empty only when no node can take it.
    fn candidates(&mut self, task: &Resources, nodes: &[NodeView]) -> Vec<usize>;

    /// How good a home `node` is for `task`; lower is better.
    fn score(&self, task: &Resources, node: &NodeView) -> f64;

    /// Choose among `(index, score)` pairs: the lowest score, then fewest tasks, then the first
    /// in turn after the previous pick. Returns the index into `nodes`.
    fn pick(&mut self, scored: &[(usize, f64)], nodes: &[NodeView]) -> Option<usize>;
}

/// The policies Cube ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    RoundRobin,
    #[default]
    Epvm,
    BinPack,
    Spread,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "roundrobin",
            PolicyKind::Epvm => "epvm",
            PolicyKind::BinPack => "binpack",
            PolicyKind::Spread => "spread",
        }
    }

    /// A fresh policy of this kind.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Epvm => Box::new(Scored::new(PolicyKind::Epvm)),
            PolicyKind::BinPack => Box::new(Scored::new(PolicyKind::BinPack)),
            PolicyKind::Spread => Box::new(Scored::new(PolicyKind::Spread)),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<PolicyKind, String> {
        match s.to_ascii_lowercase().as_str() {
            "roundrobin" | "round-robin" | "rr" => Ok(PolicyKind::RoundRobin),
            "epvm" | "e-pvm" => Ok(PolicyKind::Epvm),
            "binpack" | "bin-pack" => Ok(PolicyKind::BinPack),
            "spread" => Ok(PolicyKind::Spread),
            _ => Err(format!(
                "unknown scheduler {s:?}; expected epvm, roundrobin, binpack or spread"
            )),
        }
    }
}

/// Every node that can take the task.
pub fn all_fitting(task: &Resources, nodes: &[NodeView]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].can_take(task))
        .collect()
}

/// Draws the candidates of a large cluster.
#[derive(Debug)]
struct Sampler {
    rng: fastrand::Rng,
    /// Index of the previous pick.
    last: Option<usize>,
}

impl Default for Sampler {
    fn default() -> Sampler {
        // A fixed seed keeps a simulation's placements repeatable run to run.
        Sampler {
            rng: fastrand::Rng::with_seed(0x0C0B_E5C4_ED01),
            last: None,
        }
    }
}

impl Sampler {
    fn candidates(&mut self, task: &Resources, nodes: &[NodeView]) -> Vec<usize> {
        if nodes.len() <= EXACT_LIMIT {
            return all_fitting(task, nodes);
        }
        let mut picked = Vec::with_capacity(SAMPLE_SIZE + 1);
        if let Some(last) = self
            .last
            .filter(|&i| i < nodes.len() && nodes[i].can_take(task))
        {
            picked.push(last);
        }
        for _ in 0..SAMPLE_SIZE * 4 {
            let i = self.rng.usize(..nodes.len());
            if nodes[i].can_take(task) && !picked.contains(&i) {
                picked.push(i);
                if picked.len() > SAMPLE_SIZE {
                    break;
                }
            }
        }
        if picked.is_empty() {
            // Hardly anything fits: look at every node rather than miss the few that do.
            return all_fitting(task, nodes);
        }
        picked
    }
}

/// Where the last pick was, so ties go on in turn.
#[derive(Debug, Default)]
struct Turn {
    last: Option<String>,
}

impl Turn {
    /// Among `tied` indices, the first whose name comes after the last pick (wrapping), so the
    /// order survives nodes joining and leaving.
    fn next(&mut self, tied: &[usize], nodes: &[NodeView]) -> Option<usize> {
        let by_name = |&i: &usize| nodes[i].name.as_str();
        let after = self.last.as_deref().and_then(|last| {
            tied.iter()
                .copied()
                .filter(|i| by_name(i) > last)
                .min_by(|a, b| by_name(a).cmp(by_name(b)))
        });
        let pick = after.or_else(|| {
            tied.iter()
                .copied()
                .min_by(|a, b| by_name(a).cmp(by_name(b)))
        })?;
        self.last = Some(nodes[pick].name.clone());
        Some(pick)
    }
}

/// Round-robin: every node in turn (in the order they joined), skipping those the task does not
/// fit, whatever their load. O(1) per placement while most nodes have room.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Index of the previous pick.
    last: Option<usize>,
}

impl Policy for RoundRobin {
    fn kind(&self) -> PolicyKind {
        PolicyKind::RoundRobin
    }

    fn candidates(&mut self, task: &Resources, nodes: &[NodeView]) -> Vec<usize> {
        let n = nodes.len();
        let start = self.last.map_or(0, |l| l + 1);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| nodes[i].can_take(task))
            .into_iter()
            .collect()
    }

    fn score(&self, _: &Resources, _: &NodeView) -> f64 {
        0.0
    }

    fn pick(&mut self, scored: &[(usize, f64)], _: &[NodeView]) -> Option<usize> {
        let pick = scored.first().map(|&(i, _)| i)?;
        self.last = Some(pick);
        Some(pick)
    }
}

/// The policies that rank by a score: E-PVM, bin-pack and spread.
#[derive(Debug)]
pub struct Scored {
    kind: PolicyKind,
    turn: Turn,
    sampler: Sampler,
}

impl Scored {
    pub fn new(kind: PolicyKind) -> Scored {
        Scored {
            kind,
            turn: Turn::default(),
            sampler: Sampler::default(),
        }
    }
}

/// E-PVM's opportunity cost of adding `task` to `node`: for cpu and memory, how much
/// `LIEB^load + LIEB^(tasks/MAX_JOBS)` grows. Loads are the allocated fractions before and after,
/// so the cpu term counts (in Cube's version it cancels out).
pub fn epvm_cost(task: &Resources, node: &NodeView) -> f64 {
    let Some(cap) = node.capacity else {
        return f64::INFINITY;
    };
    let frac = |used: f64, total: f64| if total > 0.0 { used / total } else { 0.0 };
    let n = node.tasks as f64;
    let jobs = LIEB.powf((n + 1.0) / EPVM_MAX_JOBS) - LIEB.powf(n / EPVM_MAX_JOBS);
    let cpu_before = frac(node.allocated.cpu, cap.cpus);
    let cpu_after = frac(node.allocated.cpu + task.cpu, cap.cpus);
    let mem_before = frac(node.allocated.memory as f64, cap.memory as f64);
    let mem_after = frac(
        (node.allocated.memory + task.memory) as f64,
        cap.memory as f64,
    );
    let cpu_cost = LIEB.powf(cpu_after) - LIEB.powf(cpu_before) + jobs;
    let mem_cost = LIEB.powf(mem_after) - LIEB.powf(mem_before) + jobs;
    cpu_cost + mem_cost
}

impl Policy for Scored {
    fn kind(&self) -> PolicyKind {
        self.kind
    }

    fn candidates(&mut self, task: &Resources, nodes: &[NodeView]) -> Vec<usize> {
        self.sampler.candidates(task, nodes)
    }

    fn score(&self, task: &Resources, node: &NodeView) -> f64 {
        match self.kind {
            PolicyKind::Epvm => epvm_cost(task, node),
            // Most allocated first: fill one node before the next.
            PolicyKind::BinPack => -node.load_with(task),
            // Least allocated first.
            PolicyKind::Spread => node.load_with(task),
            PolicyKind::RoundRobin => 0.0,
        }
    }

    fn pick(&mut self, scored: &[(usize, f64)], nodes: &[NodeView]) -> Option<usize> {
        let best = scored.iter().map(|&(_, s)| s).fold(f64::INFINITY, f64::min);
        let near_best: Vec<usize> = scored
            .iter()
            .filter(|&&(_, s)| s <= best + TIE_EPSILON)
            .map(|&(i, _)| i)
            .collect();
        let fewest = near_best.iter().map(|&i| nodes[i].tasks).min()?;
        let tied: Vec<usize> = near_best
            .into_iter()
            .filter(|&i| nodes[i].tasks == fewest)
            .collect();
        let pick = self.turn.next(&tied, nodes)?;
        self.sampler.last = Some(pick);
        Some(pick)
    }
}

/// Run a policy over `nodes` for one task: candidates, scores, pick. Returns the chosen index,
/// or why nothing fits.
pub fn place(
    policy: &mut dyn Policy,
    task: &Resources,
    nodes: &[NodeView],
) -> Result<usize, String> {
    let candidates = policy.candidates(task, nodes);
    if candidates.is_empty() {
        return Err(no_fit_reason(task, nodes));
    }
    let scored: Vec<(usize, f64)> = candidates
        .into_iter()
        .map(|i| (i, policy.score(task, &nodes[i])))
        .collect();
    policy
        .pick(&scored, nodes)
        .ok_or_else(|| no_fit_reason(task, nodes))
}

/// Why a task fits on no node, for the task's `error`.
pub fn no_fit_reason(task: &Resources, nodes: &[NodeView]) -> String {
    if nodes.is_empty() {
        return "no worker is registered yet; waiting for one".into();
    }
    let reasons: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.fits(task).err())
        .take(5)
        .collect();
    format!(
        "no worker can take it now (cpu {}, memory {} bytes, disk {} bytes): {}; waiting for room",
        task.cpu,
        task.memory,
        task.disk,
        reasons.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, cpus: f64, mem_gib: u64) -> NodeView {
        NodeView {
            name: name.into(),
            capacity: Some(Capacity {
                cpus,
                memory: mem_gib * GIB,
                disk: 0,
            }),
            allocated: Resources::default(),
            tasks: 0,
            ready: true,
            availability: Availability::Active,
            excluded: false,
        }
    }

    fn res(cpu: f64, mem_gib: u64) -> Resources {
        Resources {
            cpu,
            memory: mem_gib * GIB,
            disk: 0,
        }
    }

    /// Place `n` tasks, booking each on the chosen node; returns the node names in order.
    fn run(kind: PolicyKind, nodes: &mut [NodeView], task: Resources, n: usize) -> Vec<String> {
        let mut policy = kind.build();
        (0..n)
            .map(|_| {
                let i = place(policy.as_mut(), &task, nodes).expect("a node fits");
                nodes[i].allocated.add(&task);
                nodes[i].tasks += 1;
                nodes[i].name.clone()
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_every_node_in_turn() {
        let mut nodes = vec![node("w1", 4.0, 8), node("w2", 4.0, 8), node("w3", 4.0, 8)];
        let picks = run(PolicyKind::RoundRobin, &mut nodes, Resources::default(), 6);
        assert_eq!(picks, ["w1", "w2", "w3", "w1", "w2", "w3"]);
    }

    #[test]
    fn round_robin_skips_nodes_that_do_not_fit() {
        let mut nodes = vec![node("w1", 1.0, 8), node("w2", 4.0, 8)];
        nodes[0].allocated.cpu = 1.0;
        let picks = run(PolicyKind::RoundRobin, &mut nodes, res(1.0, 0), 3);
        assert_eq!(picks, ["w2", "w2", "w2"]);
    }

    #[test]
    fn binpack_fills_the_most_allocated_node_first() {
        let mut nodes = vec![node("w1", 4.0, 8), node("w2", 4.0, 8)];
        nodes[1].allocated = res(1.0, 2);
        nodes[1].tasks = 1;
        let picks = run(PolicyKind::BinPack, &mut nodes, res(1.0, 2), 4);
        // w2 has room for three more, then w1 takes the rest.
        assert_eq!(picks, ["w2", "w2", "w2", "w1"]);
    }

    #[test]
    fn spread_prefers_the_least_allocated_node() {
        let mut nodes = vec![node("w1", 4.0, 8), node("w2", 8.0, 16)];
        let picks = run(PolicyKind::Spread, &mut nodes, res(1.0, 1), 3);
        // w2 is twice as large, so it stays less loaded for two of three placements.
        assert_eq!(picks.iter().filter(|n| *n == "w2").count(), 2);
    }

    #[test]
    fn epvm_prefers_the_node_where_the_task_costs_least() {
        let mut nodes = vec![node("small", 2.0, 2), node("big", 16.0, 32)];
        let picks = run(PolicyKind::Epvm, &mut nodes, res(1.0, 1), 1);
        assert_eq!(picks, ["big"]);
    }

    #[test]
    fn epvm_cpu_term_counts_real_fractions() {
        let task = res(2.0, 0);
        let mut idle = node("idle", 4.0, 8);
        let mut busy = node("busy", 4.0, 8);
        busy.allocated.cpu = 2.0;
        idle.tasks = 1;
        busy.tasks = 1;
        assert!(epvm_cost(&task, &idle) < epvm_cost(&task, &busy));
    }

    #[test]
    fn ties_break_by_fewest_tasks_then_in_turn() {
        let mut nodes = vec![node("w1", 4.0, 8), node("w2", 4.0, 8), node("w3", 4.0, 8)];
        nodes[0].tasks = 2;
        for kind in [PolicyKind::Epvm, PolicyKind::Spread, PolicyKind::BinPack] {
            let mut nodes = nodes.clone();
            let picks = run(kind, &mut nodes, Resources::default(), 4);
            assert_eq!(picks, ["w2", "w3", "w2", "w3"], "{kind}");
        }
        let picks = run(PolicyKind::Epvm, &mut nodes, Resources::default(), 7);
        let count = |n: &str| picks.iter().filter(|p| *p == n).count();
        assert_eq!((count("w1"), count("w2"), count("w3")), (1, 3, 3));
    }

    #[test]
    fn nothing_fits_gives_a_reason() {
        let mut nodes = vec![node("w1", 1.0, 1)];
        nodes[0].ready = true;
        let mut policy = PolicyKind::Epvm.build();
        let err = place(policy.as_mut(), &res(2.0, 0), &nodes).unwrap_err();
        assert!(err.contains("w1 has 1.00 of 1.00 cores free"), "{err}");
        let err = place(policy.as_mut(), &res(0.0, 0), &[]).unwrap_err();
        assert!(err.contains("no worker"), "{err}");
    }

    #[test]
    fn nodes_down_or_without_capacity_are_not_candidates() {
        let mut down = node("down", 4.0, 8);
        down.ready = false;
        let mut unknown = node("unknown", 4.0, 8);
        unknown.capacity = None;
        let nodes = vec![down, unknown, node("up", 1.0, 1)];
        let mut nodes2 = nodes.clone();
        for kind in [
            PolicyKind::RoundRobin,
            PolicyKind::Epvm,
            PolicyKind::BinPack,
            PolicyKind::Spread,
        ] {
            let picks = run(kind, &mut nodes2, Resources::default(), 2);
            assert_eq!(picks, ["up", "up"], "{kind}");
            nodes2 = nodes.clone();
        }
    }

    #[test]
    fn paused_draining_or_excluded_nodes_are_never_chosen_by_any_policy() {
        let mut paused = node("paused", 8.0, 8);
        paused.availability = Availability::Pause;
        let mut draining = node("draining", 8.0, 8);
        draining.availability = Availability::Drain;
        let mut excluded = node("excluded", 8.0, 8);
        excluded.excluded = true;
        let nodes = vec![paused, draining, excluded, node("up", 1.0, 1)];
        for kind in [
            PolicyKind::RoundRobin,
            PolicyKind::Epvm,
            PolicyKind::BinPack,
            PolicyKind::Spread,
        ] {
            let mut view = nodes.clone();
            assert_eq!(
                run(kind, &mut view, Resources::default(), 3),
                ["up"; 3],
                "{kind}"
            );
        }
        let err = place(PolicyKind::Epvm.build().as_mut(), &res(2.0, 0), &nodes).unwrap_err();
        assert!(
            err.contains("paused is paused") && err.contains("draining is draining"),
            "{err}"
        );
    }

    #[test]
    fn policy_names_parse_with_and_without_dashes() {
        for (s, k) in [
            ("epvm", PolicyKind::Epvm),
            ("roundrobin", PolicyKind::RoundRobin),
            ("round-robin", PolicyKind::RoundRobin),
            ("binpack", PolicyKind::BinPack),
            ("bin-pack", PolicyKind::BinPack),
            ("spread", PolicyKind::Spread),
        ] {
            assert_eq!(s.parse::<PolicyKind>(), Ok(k));
        }
        assert!("best".parse::<PolicyKind>().is_err());
    }

    /// Tasks per node after placing `tasks` tasks of `task` on `nodes` fresh nodes.
    fn spread_of(kind: PolicyKind, nodes: usize, tasks: usize, task: Resources) -> Vec<usize> {
        let mut view: Vec<NodeView> = (0..nodes)
            .map(|i| node(&format!("n{i:04}"), 4.0, 8))
            .collect();
        run(kind, &mut view, task, tasks);
        view.iter().map(|n| n.tasks).collect()
    }

    #[test]
    fn sampled_placement_in_a_large_cluster_keeps_its_quality() {
        let nodes = 500;
        assert!(nodes > EXACT_LIMIT, "this test is about sampling");
        // Spread-like policies: within a couple of tasks of perfectly even (exact: 0 apart).
        for kind in [PolicyKind::Spread, PolicyKind::Epvm] {
            let counts = spread_of(kind, nodes, 3000, res(0.5, 0));
            let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
            assert_eq!(counts.iter().sum::<usize>(), 3000);
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 2),
                "{kind}: {min:?}..{max:?}"
            );
        }
        // Round-robin stays exact.
        let counts = spread_of(PolicyKind::RoundRobin, nodes, 3000, res(0.5, 0));
        assert!(counts.iter().all(|&c| c == 6));
        // Bin-pack: 1,000 one-core tasks need 250 four-core nodes; sampling uses no more.
        let counts = spread_of(PolicyKind::BinPack, nodes, 1000, res(1.0, 0));
        let used = counts.iter().filter(|&&c| c > 0).count();
        assert_eq!(used, 250, "bin-pack used {used} nodes");
    }
}
