//! The schedule engine of Polyshell: jobs (clusters of actions bound to roles), schedules that
//! order them (`site-sequential`, `sequential`, `atomic`, `parallel`), batches of chained
//! schedules sharing state, and the lock primitives the modes are built from.
//!
//! Planned here (see `ARCHITECTURE.md`). This crate knows nothing of SSH: it talks to shells
//! through a trait, so every schedule can be tested with local shells and fakes.
