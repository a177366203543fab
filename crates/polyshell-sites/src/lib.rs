//! The site and role store of Polyshell.
//!
//! A *site* is a name mapped to configuration (a JSON-like map); a site with a `host` is
//! remote, one without is local. A *role* names a group of sites; every site is in the role of
//! its own name, and the role `all` holds every site. Host ranges in ClusterShell syntax
//! (`web[01-20]`) name many sites at once.
//!
//! - [`SiteStore`]: the concurrent store, with the original Polyshell's semantics.
//! - [`Site`]: a copy of one site, with typed accessors ([`Site::host`], [`Site::port`], ...)
//!   and typed non-data values ([`Site::value`]).
//! - [`range`]: expand and fold host ranges.
//! - [`inventory`]: load the `[sites]` and `[roles]` tables of a Polyfile, with every error
//!   positioned ([`diag`]).
//!
//! ```
//! use polyshell_sites::SiteStore;
//! use serde_json::json;
//!
//! let sites = SiteStore::new();
//! sites.add(["site1", "site2"], "app", json!({"x": "1"}));
//! sites.add("site2", (), json!({"x": "2"}));
//! assert_eq!(sites.get("site1").unwrap().config()["x"], "1");
//! assert_eq!(sites.get("site2").unwrap().config()["x"], "2");
//! assert!(sites.get("app").is_none()); // a role, not a site
//! ```

#![warn(missing_docs)]

mod config;
pub mod diag;
pub mod inventory;
pub mod range;
mod store;

pub use config::{duration_from_seconds, type_name, Config, ConfigError, Site, SECONDS_RULE};
pub use serde_json::{json, Value};
pub use store::{Names, SiteStore, ALL};
