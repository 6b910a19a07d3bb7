//! What placement knows of a node besides its room (ARCHITECTURE.md §8b): the facts its worker
//! reports (labels, named volumes, allowed host paths), the labels the operator set on it here
//! (`cube node label`, which win on the same key), and its availability (`active`, `pause`,
//! `drain`, with an optional drain deadline). The operator's settings are durable (the node's
//! record); the worker's facts are live, heard again after every restart.
//!
//! The scheduler hears the result as [`Effect::NodeFacts`] whenever it changes. A drain moves
//! every task of the node that belongs to no service through [`Core::drain_task`], level-
//! triggered: [`Core::reconcile`] moves any such task it finds on a draining node, so a task
//! placed or reported there later moves too. Tasks of a service are left to the services
//! module, which reads [`Core::availability`], [`Core::drain_deadline`] and
//! [`Core::tasks_on`].

use serde::{Deserialize, Serialize};

use super::*;
use crate::constraint::{self, NODE_KEY};

/// The longest drain deadline an operator may give.
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A node as the manager's store keeps it (the `nodes` table).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The address its name is bound to.
    pub address: String,
    /// Labels the operator set here (`cube node label`); they win over the worker's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whether it takes new tasks.
    #[serde(default)]
    pub availability: Availability,
    /// When a drain should be over (its tasks of services replaced by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<chrono::DateTime<chrono::Utc>>,
}

impl NodeRecord {
    /// A node bound to `address`, active, with no labels of the manager's.
    pub fn at(address: impl Into<String>) -> NodeRecord {
        NodeRecord {
            address: address.into(),
            ..NodeRecord::default()
        }
    }
}

/// What the operator and the worker say of a node, beside its liveness.
#[derive(Debug, Clone, Default)]
pub(super) struct Settings {
    /// Labels set here; they win over the worker's on the same key.
    labels: BTreeMap<String, String>,
    pub(super) availability: Availability,
    /// The drain's deadline: monotonic (for the services module) and wall (for the record).
    deadline: Option<(Duration, chrono::DateTime<chrono::Utc>)>,
    /// What the worker last reported; `None` until it did.
    worker: Option<NodeFacts>,
    /// What the scheduler was last told.
    told: Option<PlacementFacts>,
}

/// A change an operator asks of a node (`PATCH /nodes/{name}`); every part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    pub availability: Option<Availability>,
    /// With a drain: how long its tasks of services have to move.
    pub deadline: Option<Duration>,
    /// Labels to set (merged with those set before).
    pub labels: BTreeMap<String, String>,
    /// Labels set before to remove.
    pub remove_labels: Vec<String>,
}

/// A node's availability and labels, as `GET /nodes` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub availability: Availability,
    pub drain_deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// The worker's labels overlaid by the manager's: what constraints match.
    pub labels: BTreeMap<String, String>,
    /// What the worker reports (`cube worker --label`).
    pub worker_labels: BTreeMap<String, String>,
    /// What the operator set here (`cube node label`).
    pub manager_labels: BTreeMap<String, String>,
    /// Named volumes the worker holds.
    pub volumes: Vec<String>,
    /// Host paths it lets tasks mount under.
    pub allowed_host_paths: Vec<String>,
    /// Whether its worker has reported these facts since the manager started.
    pub known: bool,
}

impl Node {
    /// The worker's labels overlaid by the operator's.
    pub(super) fn effective_labels(&self) -> BTreeMap<String, String> {
        let s = &self.settings;
        let mut labels = s
            .worker
            .as_ref()
            .map(|f| f.labels.clone())
            .unwrap_or_default();
        labels.extend(s.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }

    fn placement_facts(&self) -> PlacementFacts {
        let worker = self.settings.worker.clone().unwrap_or_default();
        PlacementFacts {
            labels: self.effective_labels(),
            volumes: worker.volumes,
            allowed_host_paths: worker.allowed_host_paths,
            availability: self.settings.availability,
        }
    }

    pub(super) fn record(&self) -> NodeRecord {
        NodeRecord {
            address: self.address.clone(),
            labels: self.settings.labels.clone(),
            availability: self.settings.availability,
            drain_deadline: self.settings.deadline.map(|(_, wall)| wall),
        }
    }

    pub(super) fn info(&self) -> NodeInfo {
        let worker = self.settings.worker.clone();
        let known = worker.is_some();
        let worker = worker.unwrap_or_default();
        NodeInfo {
            availability: self.settings.availability,
            drain_deadline: self.settings.deadline.map(|(_, wall)| wall),
            labels: self.effective_labels(),
            worker_labels: worker.labels,
            manager_labels: self.settings.labels.clone(),
            volumes: worker.volumes,
            allowed_host_paths: worker.allowed_host_paths,
            known,
        }
    }
}

impl Core {
    /// A node's record read back at start-up: its address and the operator's settings. A
    /// drain deadline is carried over as what was left of it.
    pub(super) fn restore_node(&mut self, now: Now, nid: NodeId, record: NodeRecord) {
        let node = &mut self.nodes[nid];
        node.address = record.address;
        node.settings.labels = record.labels;
        node.settings.availability = record.availability;
        node.settings.deadline = record.drain_deadline.map(|wall| {
            let left = (wall - now.wall).to_std().unwrap_or(Duration::ZERO);
            (now.mono + left, wall)
        });
        if node.settings.availability != Availability::Active || !node.settings.labels.is_empty() {
            self.tell_facts(nid);
        }
    }

    /// The worker at `endpoint` reports its labels, volumes and allowed host paths (the
    /// proxy sends them when they change, and after each registration).
    pub fn node_facts(&mut self, now: Now, endpoint: EndpointId, facts: NodeFacts) {
        let Some(nid) = self.bound_node(endpoint) else {
            return;
        };
        if self.nodes[nid].settings.worker.as_ref() == Some(&facts) {
            return;
        }
        info!(
            "worker {}: labels {:?}, volumes {:?}, host paths allowed {:?}",
            self.nodes[nid].name, facts.labels, facts.volumes, facts.allowed_host_paths
        );
        self.nodes[nid].settings.worker = Some(facts);
        self.tell_facts(nid);
        // A global service may now run here, or no longer.
        self.nodes_changed_services();
        self.settle(now);
    }

    /// An operator's change of a node's availability or labels (`PATCH /nodes/{name}`). The
    /// record is written with the step; answer once it is durable. Labels are checked here:
    /// keys and values as `cube worker --label` takes them, `node` reserved.
    pub fn change_node(
        &mut self,
        now: Now,
        name: &str,
        change: NodeChange,
    ) -> Result<NodeInfo, NodeRefusal> {
        let nid = *self
            .node_ids
            .get(name)
            .ok_or_else(|| NodeRefusal::NotFound(name.to_string()))?;
        for (k, v) in &change.labels {
            check_label(k, Some(v))?;
        }
        for k in &change.remove_labels {
            check_label(k, None)?;
        }
        if change.deadline.is_some_and(|d| d > MAX_DRAIN_DEADLINE) {
            return Err(NodeRefusal::BadChange(format!(
                "a drain deadline of {:?} is too long; expected at most {} s",
                change.deadline.unwrap_or_default(),
                MAX_DRAIN_DEADLINE.as_secs()
            )));
        }
        if change.deadline.is_some() && change.availability != Some(Availability::Drain) {
            return Err(NodeRefusal::BadChange(
                "a deadline goes with a drain; expected \"availability\": \"drain\" with it".into(),
            ));
        }
        let node = &mut self.nodes[nid];
        let before = node.record();
        for k in &change.remove_labels {
            node.settings.labels.remove(k);
        }
        node.settings
            .labels
            .extend(change.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(a) = change.availability {
            if a != node.settings.availability {
                info!(
                    "node {name}: availability {a} (was {})",
                    node.settings.availability
                );
            }
            node.settings.availability = a;
            node.settings.deadline = match (a, change.deadline) {
                (Availability::Drain, Some(d)) => Some((
                    now.mono + d,
                    now.wall + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()),
                )),
                _ => None,
            };
        }
        if node.record() != before {
            self.dirty_nodes.push(nid);
        }
        self.tell_facts(nid);
        if self.nodes[nid].settings.availability == Availability::Drain {
            let placed: Vec<Uuid> = self.nodes[nid].placed.iter().copied().collect();
            for id in placed {
                self.reconcile(now, id);
            }
        }
        // Services replace their tasks on a draining node, and follow labels.
        self.nodes_changed_services();
        self.settle(now);
        Ok(self.nodes[nid].info())
    }

    /// Tell the scheduler the node's facts if they changed; waiting tasks get another try,
    /// since a constraint may be met now (or a roomier node meet it).
    fn tell_facts(&mut self, nid: NodeId) {
        let facts = self.nodes[nid].placement_facts();
        if self.nodes[nid].settings.told.as_ref() == Some(&facts) {
            return;
        }
        self.nodes[nid].settings.told = Some(facts.clone());
        self.effects.push(Effect::NodeFacts {
            name: self.nodes[nid].name.clone(),
            facts,
        });
        self.retry_unsatisfied();
        if !self.waiting.is_empty() {
            self.retry_waiting();
        }
    }

    /// The tasks no node satisfied are asked again: a node's facts, availability or readiness
    /// changed. Answers to a request out now may be stale: it is done again when they come.
    pub(super) fn retry_unsatisfied(&mut self) {
        if self.asking {
            self.facts_while_asking = true;
        }
        for id in std::mem::take(&mut self.unsatisfied) {
            if let Some(e) = self.tasks.get_mut(&id)
                && e.placing == Placing::Unsatisfied
            {
                e.placing = Placing::No;
                self.enqueue(id);
            }
        }
        self.kick();
    }

    /// A task on a draining node moves: a new attempt placed elsewhere, as when its node is
    /// lost, but the node is up, so its copy there is stopped (as a stray copy, §4). Tasks of
    /// a service are left alone: the services module replaces them, start first.
    pub(super) fn drain_task(&mut self, now: Now, id: Uuid) {
        let Some(e) = self.tasks.get(&id) else {
            return;
        };
        let Some(nid) = e.node else {
            return;
        };
        if e.task.service.is_some()
            || e.task.desired != Goal::Running
            || !e.task.state.is_active()
            || self.nodes[nid].settings.availability != Availability::Drain
        {
            return;
        }
        let node = self.nodes[nid].name.clone();
        if let Some(e) = self.tasks.get_mut(&id) {
            e.prefer = None;
        }
        info!("task {id}: node {node} is draining, moving it");
        self.place_elsewhere(
            now,
            id,
            format!("node {node} is draining; placing it elsewhere"),
        );
        // Its copy on the draining node is now a stray one: stopped.
        self.reconcile(now, id);
    }

    /// The node's availability (`active` for an unknown node id).
    pub fn availability(&self, nid: NodeId) -> Availability {
        self.nodes
            .get(nid)
            .map_or(Availability::Active, |n| n.settings.availability)
    }

    /// When the node's drain should be over (monotonic time), if it drains with a deadline.
    pub fn drain_deadline(&self, nid: NodeId) -> Option<Duration> {
        self.nodes
            .get(nid)
            .filter(|n| n.settings.availability == Availability::Drain)
            .and_then(|n| n.settings.deadline.map(|(mono, _)| mono))
    }

    /// The tasks whose current attempt is placed on the node.
    pub fn tasks_on(&self, nid: NodeId) -> impl Iterator<Item = Uuid> + '_ {
        self.nodes
            .get(nid)
            .into_iter()
            .flat_map(|n| n.placed.iter().copied())
    }

    /// The id of a known node.
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        self.node_ids.get(name).copied()
    }

    /// A node's availability and labels, by name.
    pub fn node_info(&self, name: &str) -> Option<NodeInfo> {
        self.node_ids.get(name).map(|&nid| self.nodes[nid].info())
    }

    /// Whether some known worker allows each host path the task mounts. Only when the
    /// manager has heard the facts of at least one worker: before that it cannot know, and
    /// the worker refuses the mount at start. The error names the volume and what each
    /// worker allows.
    pub fn check_host_paths(&self, task: &Task) -> Result<(), String> {
        let known: Vec<&Node> = self
            .known_nodes()
            .filter(|n| n.settings.worker.is_some())
            .collect();
        if known.is_empty() {
            return Ok(());
        }
        for (i, v) in task.volumes.iter().enumerate() {
            if !v.is_host_path() {
                continue;
            }
            let allowed = known.iter().any(|n| {
                n.settings
                    .worker
                    .as_ref()
                    .is_some_and(|f| v.allowed_by(&f.allowed_host_paths))
            });
            if !allowed {
                let each: Vec<String> = known
                    .iter()
                    .take(8)
                    .map(|n| {
                        let a = n
                            .settings
                            .worker
                            .as_ref()
                            .map(|f| f.allowed_host_paths.join(", "))
                            .unwrap_or_default();
                        if a.is_empty() {
                            format!("{} allows none", n.name)
                        } else {
                            format!("{} allows {a}", n.name)
                        }
                    })
                    .collect();
                return Err(format!(
                    "volumes[{i}]: no worker allows the host path {} ({}); expected a path under a prefix a worker allows (cube worker --allow-host-path), or a named volume",
                    v.source,
                    each.join("; ")
                ));
            }
        }
        Ok(())
    }
}

/// A label key (and value, when setting) as the operator may set it.
fn check_label(key: &str, value: Option<&str>) -> Result<(), NodeRefusal> {
    constraint::check_label_key(key).map_err(NodeRefusal::BadChange)?;
    if let Some(v) = value {
        constraint::check_label_value(v)
            .map_err(|why| NodeRefusal::BadChange(format!("label {key}: {why}")))?;
    }
    if key == NODE_KEY {
        return Err(NodeRefusal::BadChange(format!(
            "the label {NODE_KEY:?} is reserved: it always holds the node's own name"
        )));
    }
    Ok(())
}
