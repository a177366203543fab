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
    /// are not cached. `load` runs without the lock held: two callers may both parse a file
    /// the first time, and one result wins.
    pub(crate) fn get<E>(
        &self,
        path: &Path,
        load: impl FnOnce(&Path) -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let map = self.0.get_or_init(Default::default);
        let cached = map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .filter(|(when, _)| *when == modified)
            .map(|(_, value)| value.clone());
        if let Some(value) = cached {
            return Ok(value);
        }
        let value = Arc::new(load(path)?);
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), (modified, value.clone()));
        Ok(value)
    }
}
