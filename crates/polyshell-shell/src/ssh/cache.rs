//! Files every connection of a run reads (ssh_config, known_hosts, private keys) are read and
//! parsed once per run, not once per site: cached by path and modification time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// A cache of one kind of parsed file; a `static` per kind.
pub(crate) struct FileCache<T>(OnceLock<Mutex<HashMap<PathBuf, Entry<T>>>>);

type Entry<T> = (Option<SystemTime>, Arc<T>);

impl<T> FileCache<T> {
    pub(crate) const fn new() -> Self {
        FileCache(OnceLock::new())
    }

    /// `path` parsed by `load`, from the cache when the file has not changed since. Errors
    /// are not cached. `load` runs with the cache locked, so a file is parsed once however
    /// many sites ask at the same moment (a 2,000-host ssh_config parsed by every worker
    /// thread at once was some 17 MB of a 2,000-site run's peak RSS); `load` must not use
    /// the same cache.
    pub(crate) fn get<E>(
        &self,
        path: &Path,
        load: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut map = self
            .0
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, value)) = map.get(path).filter(|(when, _)| *when == modified) {
            return Ok(value.clone());
        }
        let value = Arc::new(load(path)?);
        map.insert(path.to_owned(), (modified, value.clone()));
        Ok(value)
    }
}
