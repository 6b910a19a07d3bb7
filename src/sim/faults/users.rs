//! The users of the simulated world: submissions (new, repeated, stopped at once), stops, and
//! an operator pausing, draining and activating nodes, answered only once the manager's commit
//! makes them durable.

use super::*;
use crate::actors::manager::core::NodeChange;
use crate::node::Availability;

impl World {
    pub(super) fn user_submit(&mut self) {
        let mut task = Task::new("sim/busybox");
        task.id = Uuid::from_u128(self.rng.u128(..));
        task.name = format!("t{}", self.users.asked.len() + self.users.acked.len());
        task.created_at = wall(self.now);
        task.cpu = [0.0, 0.5, 1.0][self.rng.usize(..3)];
        task.restart_policy = [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ][self.rng.usize(..3)];
        task.max_restarts = self.rng.u32(0..=3);
        // What each of its containers does: run until stopped, or end after a while.
        task.cmd = match self.rng.u32(0..4) {
            0 | 1 => vec!["run".into()],
            2 => vec!["exit".into(), "0".into(), self.rng.u32(1..15).to_string()],
            _ => vec!["exit".into(), "1".into(), self.rng.u32(1..15).to_string()],
        };
        if self.rng.u32(0..4) == 0 {
            task.exposed_ports = vec!["8080/tcp".into()];
            task.health_check = Some("/health".into());
        }
        let stop_soon = self.rng.u32(0..4) == 0;
        self.note(format!(
            "user submits {} {} {:?} {:?}{}",
            task.id,
            task.restart_policy.as_str(),
            task.cmd,
            task.max_restarts,
            if stop_soon {
                ", and stops it at once"
            } else {
                ""
            }
        ));
        self.users.asked.insert(task.id, task.clone());
        self.submit(task.clone());
        if stop_soon {
            let d = self.ms(0, 60);
            self.at(d, Ev::UserStop(task.id));
        }
    }

    pub(super) fn user_resubmit(&mut self) {
        if let Some(id) = self.pick_task() {
            let task = self.users.acked[&id].clone();
            self.note(format!("user submits {id} again"));
            self.submit(task);
        }
    }

    pub(super) fn submit(&mut self, task: Task) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let id = task.id;
        let answer = match m.core.submit(now, task) {
            Ok(Submitted::Created(_)) => Answer::Created,
            Ok(Submitted::Existing(_)) => Answer::Existing,
            Err(e) => {
                self.note(format!("user gets {e}"));
                return;
            }
        };
        let commit = self.manager_step_with(true);
        self.answer_after(commit, answer, id);
    }

    /// Answer a user once commit `commit` is durable (at once when nothing was written).
    pub(super) fn answer_after(&mut self, commit: u64, answer: Answer, id: Uuid) {
        if commit == 0 {
            if answer == Answer::Stopped {
                self.users.stops.insert(id);
            }
            return;
        }
        if let Some(m) = self.manager.as_mut() {
            m.answers.push((commit, answer, id));
        }
    }

    /// An operator pauses, drains or activates a node.
    pub(super) fn user_availability(&mut self) {
        let w = self.rng.usize(..self.nodes.len());
        let availability = [
            Availability::Pause,
            Availability::Drain,
            Availability::Active,
            Availability::Active,
        ][self.rng.usize(..4)];
        self.change_availability(w, availability);
    }

    /// Every node active again (the heal).
    pub(super) fn activate_all(&mut self) {
        for w in 0..self.nodes.len() {
            self.change_availability(w, Availability::Active);
        }
    }

    fn change_availability(&mut self, w: usize, availability: Availability) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        let name = format!("w{}", w + 1);
        let change = NodeChange {
            availability: Some(availability),
            deadline: (availability == Availability::Drain).then(|| Duration::from_secs(10)),
            ..NodeChange::default()
        };
        // A node the manager has not heard of yet is not there to change.
        if m.core.change_node(now, &name, change).is_ok() {
            self.note(format!("operator sets {name} {availability}"));
            self.count("availability changes");
            self.manager_step_with(true);
        }
    }

    pub(super) fn user_stop(&mut self, id: Uuid) {
        let now = self.now();
        let Some(m) = self.manager.as_mut() else {
            return;
        };
        if m.core.stop(now, id).is_err() {
            return;
        }
        self.note(format!("user stops {id}"));
        let commit = self.manager_step_with(true);
        self.answer_after(commit, Answer::Stopped, id);
    }
}
