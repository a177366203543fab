//! Jobs: named clusters of actions, each action bound to roles.

use crate::context::ActionFn;
use crate::lock::Lock;
use polyshell_sites::Names;
use std::collections::HashMap;
use std::sync::Arc;

/// One action of a job: what runs, on which roles' sites, under which extra locks.
#[derive(Clone)]
pub struct Action {
    /// The roles whose sites the action runs on.
    pub roles: Vec<String>,
    /// What the action does on each site.
    pub run: ActionFn,
    /// Locks taken around the action on each site.
    pub locks: Vec<Arc<dyn Lock>>,
}

/// A named cluster of actions. Running the job runs, on every site that matches, all the
/// actions whose roles match it, concurrently; each at most once per site.
#[derive(Clone)]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// The job's actions, in order.
    pub actions: Vec<Action>,
    /// Locks taken around the job's actions on each site.
    pub locks: Vec<Arc<dyn Lock>>,
}

/// The jobs of a program, by name.
#[derive(Clone, Default)]
pub struct Jobs {
    jobs: HashMap<String, Arc<Job>>,
}

impl Jobs {
    /// No jobs.
    pub fn new() -> Jobs {
        Jobs::default()
    }

    /// Adds an action to job `name` (creating the job), bound to `roles`; no roles binds it
    /// to the role of the job's own name, as in the original.
    pub fn add(&mut self, name: &str, roles: impl Names, run: ActionFn) -> &mut Jobs {
        let mut roles = roles.to_names();
        if roles.is_empty() {
            roles.push(name.to_owned());
        }
        self.job_mut(name).actions.push(Action {
            roles,
            run,
            locks: Vec::new(),
        });
        self
    }

    /// Attaches `lock` to job `name`: taken around its actions on each site.
    pub fn lock(&mut self, name: &str, lock: Arc<dyn Lock>) -> &mut Jobs {
        self.job_mut(name).locks.push(lock);
        self
    }

    /// Attaches `lock` to the last action added to job `name` only.
    pub fn lock_action(&mut self, name: &str, lock: Arc<dyn Lock>) -> &mut Jobs {
        if let Some(action) = self.job_mut(name).actions.last_mut() {
            action.locks.push(lock);
        }
        self
    }

    fn job_mut(&mut self, name: &str) -> &mut Job {
        let job = self.jobs.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Job {
                name: name.to_owned(),
                actions: Vec::new(),
                locks: Vec::new(),
            })
        });
        Arc::make_mut(job)
    }

    /// The job called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Job>> {
        self.jobs.get(name)
    }

    /// Job names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.jobs.keys().cloned().collect();
        names.sort();
        names
    }
}
