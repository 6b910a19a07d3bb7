//! Nodes: endpoints (one per WorkerProxy), the name each worker registers under and the address
//! it is bound to, and what a node going up or down means for its tasks (ARCHITECTURE.md §8).

use super::*;

impl Core {
    /// The shell watches a worker at `address` (a WorkerProxy). A node bound to that address
    /// in the store is watched by it from now on.
    pub fn add_endpoint(&mut self, address: &str) -> EndpointId {
        if let Some(i) = self
            .endpoints
            .iter()
            .position(|e| e.address == address && !e.forgotten)
        {
            return i;
        }
        let id = self.endpoints.len();
        let bound = self
            .nodes
            .iter()
            .position(|n| n.address == address && n.endpoint.is_none());
        self.endpoints.push(Endpoint {
            address: address.to_string(),
            name: bound.map(|n| self.nodes[n].name.clone()),
            status: NodeStatus::Connecting,
            refused: None,
            forgotten: false,
        });
        if let Some(nid) = bound {
            self.nodes[nid].endpoint = Some(id);
        }
        id
    }

    /// The worker at `endpoint` answers, as `name` (its first answer, or its first since it was
    /// Down, or a new name). Registers the name, or refuses it when another live address holds
    /// it.
    pub fn node_up(&mut self, now: Now, endpoint: EndpointId, name: &str) {
        let Some(ep) = self.endpoints.get_mut(endpoint).filter(|e| !e.forgotten) else {
            return;
        };
        ep.status = NodeStatus::Ready;
        if ep.name.as_deref() != Some(name)
            && let Some(old) = ep.name.replace(name.to_string())
            && let Some(&old_id) = self.node_ids.get(&old)
            && self.nodes[old_id].endpoint == Some(endpoint)
        {
            self.nodes[old_id].endpoint = None;
            warn!(
                "the worker at {} now answers as {name}, no longer as {old}",
                self.endpoints[endpoint].address
            );
            self.node_lost(now, old_id);
        }
        let nid = self.node_id(name);
        if let Some(other) = self.nodes[nid].endpoint
            && other != endpoint
            && self.endpoints[other].status != NodeStatus::Down
        {
            let reason = format!(
                "the name {name} is bound to the worker at {}, which still answers; give each worker its own --name",
                self.endpoints[other].address
            );
            if self.endpoints[endpoint].refused.as_ref() != Some(&reason) {
                warn!(
                    "worker at {} refused: {reason}",
                    self.endpoints[endpoint].address
                );
                self.effects.push(Effect::Refused {
                    endpoint,
                    reason: reason.clone(),
                });
            }
            self.endpoints[endpoint].refused = Some(reason);
            return;
        }
        self.endpoints[endpoint].refused = None;
        let address = self.endpoints[endpoint].address.clone();
        let node = &mut self.nodes[nid];
        if let Some(other) = node.endpoint.replace(endpoint)
            && other != endpoint
        {
            info!("worker {name} moves from {} to {address}", node.address);
            self.endpoints[other].name = None;
        }
        if node.address != address {
            node.address = address;
            self.dirty_nodes.push(nid);
        }
        self.effects.push(Effect::Registered {
            endpoint,
            name: name.to_string(),
        });
        if self.nodes[nid].status != NodeStatus::Ready {
            info!("worker {name} at {} is Ready", self.nodes[nid].address);
            let node = &mut self.nodes[nid];
            node.status = NodeStatus::Ready;
            node.synced = false;
            node.calls.clear();
            self.effects.push(Effect::NodeReady {
                name: name.to_string(),
                ready: true,
            });
            self.effects.push(Effect::Resync(endpoint));
            // Each node's resyncs keep a phase of their own, so thousands of nodes that came
            // up together do not all send their full reports at the same moment.
            let phase = self.config.resync_interval.mul_f64(spread(nid));
            self.timers.arm(
                now.mono + self.config.resync_interval + phase,
                Timer::Resync(nid),
            );
            let touched: BTreeSet<Uuid> = self.nodes[nid]
                .placed
                .union(&self.nodes[nid].seen)
                .copied()
                .collect();
            for id in touched {
                self.reconcile(now, id);
            }
            // A node up again may be the one a waiting task's constraints ask for.
            self.retry_unsatisfied();
        }
        self.nodes_changed_services();
        self.settle(now);
    }

    /// The worker at `endpoint` has been silent for the node timeout.
    pub fn node_down(&mut self, now: Now, endpoint: EndpointId) {
        let Some(ep) = self.endpoints.get_mut(endpoint).filter(|e| !e.forgotten) else {
            return;
        };
        ep.status = NodeStatus::Down;
        let Some(name) = ep.name.clone() else {
            return;
        };
        if ep.refused.is_some() {
            return;
        }
        let nid = self.node_id(&name);
        if self.nodes[nid].endpoint != Some(endpoint) {
            return;
        }
        self.node_lost(now, nid);
        // A live worker refused this name may take it now.
        let claimant = self.endpoints.iter().position(|e| {
            e.refused.is_some() && e.status == NodeStatus::Ready && e.name.as_deref() == Some(&name)
        });
        if let Some(c) = claimant {
            self.node_up(now, c, &name);
        }
        self.nodes_changed_services();
        self.settle(now);
    }

    /// A worker joins as `name` at `address` (`cube worker --join`): the name is bound to the
    /// address in the store, so the manager watches it from now on and after any restart.
    /// `Ok(true)` when that changed anything. The shell then watches the address.
    pub fn join(&mut self, now: Now, name: &str, address: &str) -> Result<bool, NodeRefusal> {
        if let Some(&nid) = self.node_ids.get(name) {
            let node = &self.nodes[nid];
            if node.address == address {
                return Ok(false);
            }
            if let Some(ep) = node.endpoint
                && self.endpoints[ep].status != NodeStatus::Down
            {
                return Err(NodeRefusal::NameTaken {
                    name: name.to_string(),
                    address: self.endpoints[ep].address.clone(),
                });
            }
        }
        // The address answers as another node that is not Down: this name would never come up.
        let holder = self
            .endpoints
            .iter()
            .filter(|e| !e.forgotten && e.address == address)
            .find_map(|e| e.name.clone())
            .filter(|other| other != name);
        if let Some(other) = holder
            && let Some(&oid) = self.node_ids.get(&other)
            && self.nodes[oid].status != NodeStatus::Down
        {
            return Err(NodeRefusal::AddressTaken {
                address: address.to_string(),
                name: other,
            });
        }
        let nid = self.node_id(name);
        // The name leaves its old address (Down, as checked): that one is no longer watched,
        // and the name binds to the new address as soon as it is.
        if let Some(old) = self.nodes[nid].endpoint.take() {
            self.endpoints[old].name = None;
            self.endpoints[old].forgotten = true;
            self.effects.push(Effect::Disconnect(old));
        }
        self.nodes[nid].address = address.to_string();
        self.dirty_nodes.push(nid);
        // Down after a node timeout unless an endpoint claims it (nothing may answer there).
        self.timers
            .arm(now.mono + self.config.node_timeout, Timer::Unwatched(nid));
        Ok(true)
    }

    /// Forget the node `name`: no tasks may be placed on it. Its record leaves the store, its
    /// endpoints stop being watched, and the scheduler no longer places there. A worker that
    /// comes back under the name later (a join, or `--workers` after a restart) is a new node.
    pub fn forget(&mut self, name: &str) -> Result<(), NodeRefusal> {
        let nid = *self
            .node_ids
            .get(name)
            .ok_or_else(|| NodeRefusal::NotFound(name.to_string()))?;
        let node = &mut self.nodes[nid];
        if !node.placed.is_empty() {
            return Err(NodeRefusal::HasTasks {
                name: name.to_string(),
                tasks: node.placed.iter().copied().collect(),
            });
        }
        info!("forgetting node {name} (at {})", node.address);
        let address = node.address.clone();
        let was_ready = node.status == NodeStatus::Ready;
        node.status = NodeStatus::Down;
        node.endpoint = None;
        node.synced = false;
        node.calls.clear();
        node.seen.clear();
        self.node_ids.remove(name);
        self.nodes_changed_services();
        self.dirty_nodes.retain(|&n| n != nid);
        self.forgotten.push(name.to_string());
        if was_ready {
            self.effects.push(Effect::NodeReady {
                name: name.to_string(),
                ready: false,
            });
        }
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            let unnamed_there = ep.name.is_none() && ep.address == address;
            if !ep.forgotten && (ep.name.as_deref() == Some(name) || unnamed_there) {
                ep.forgotten = true;
                self.effects.push(Effect::Disconnect(i));
            }
        }
        Ok(())
    }

    /// A node is gone: its tasks run elsewhere (as new attempts, not restarts), its stopped
    /// tasks are done. Whatever it still runs is stopped when it reports again.
    pub(super) fn node_lost(&mut self, now: Now, nid: NodeId) {
        let node = &mut self.nodes[nid];
        if node.status == NodeStatus::Down {
            return;
        }
        warn!("worker {} is Down; moving its tasks", node.name);
        node.status = NodeStatus::Down;
        node.synced = false;
        node.calls.clear();
        self.effects.push(Effect::NodeReady {
            name: node.name.clone(),
            ready: false,
        });
        let placed: Vec<Uuid> = node.placed.iter().copied().collect();
        for id in placed {
            self.reconcile(now, id);
        }
    }

    pub(super) fn bound_node(&self, endpoint: EndpointId) -> Option<NodeId> {
        let ep = self.endpoints.get(endpoint)?;
        if ep.refused.is_some() {
            return None;
        }
        let nid = *self.node_ids.get(ep.name.as_ref()?)?;
        (self.nodes[nid].endpoint == Some(endpoint)).then_some(nid)
    }
}
