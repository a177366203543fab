//! The site and role store of Polyshell: sites are names mapped to configuration, roles name
//! groups of sites, host ranges (`web[01-20]`) expand to many sites.
//!
//! Planned here (see `ARCHITECTURE.md`): `SiteStore` with the original's `add` / `get` /
//! `list` / `update` semantics, site configuration values, host ranges, and loading the
//! `[sites]` and `[roles]` tables of a Polyfile with exact error positions.
