//! Source offsets in a JSON file of the state dir, replaced atomically (write, fsync, rename).

use super::{OffsetStore, TransportError};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tokio::sync::Mutex;

/// Offsets of one pipeline in `<state_dir>/<pipeline>/source-offsets.json`.
pub struct FileOffsetStore {
    path: PathBuf,
    /// component → partition → offset; the whole file, kept in memory.
    all: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
}

impl FileOffsetStore {
    pub fn open(state_dir: &std::path::Path, pipeline: &str) -> Result<Self, TransportError> {
        let dir = state_dir.join(pipeline);
        std::fs::create_dir_all(&dir).map_err(|e| {
            TransportError::fatal(format!("cannot create state dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("source-offsets.json");
        let all = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                TransportError::fatal(format!("{} is corrupt: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(TransportError::fatal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(FileOffsetStore {
            path,
            all: Mutex::new(all),
        })
    }
}

/// An exclusive hold on a pipeline's folder of the state dir, released when dropped (or when
/// the process ends, however it ends). Two processes running one embedded pipeline on one state
/// dir would both read the source from the same offsets and overwrite each other's file.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes `<state_dir>/<pipeline>/lock`, or says which process holds it.
    pub fn take(state_dir: &std::path::Path, pipeline: &str) -> Result<StateLock, String> {
        use std::io::{Read, Seek, Write};
        let dir = state_dir.join(pipeline);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
        let path = dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("another sluice process (pid {holder})")
                };
                return Err(format!(
                    "pipeline `{pipeline}` is already running from state dir {} in {who}; stop it first, or give this run its own `--state-dir`",
                    state_dir.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(StateLock { _file: file })
    }
}

#[async_trait]
impl OffsetStore for FileOffsetStore {
    async fn load(&self, component: &str) -> Result<HashMap<String, Value>, TransportError> {
        let all = self.all.lock().await;
        Ok(all
            .get(component)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn store(
        &self,
        component: &str,
        offsets: HashMap<String, Value>,
    ) -> Result<(), TransportError> {
        let mut all = self.all.lock().await;
        all.entry(component.to_string())
            .or_default()
            .extend(offsets);
        self.write(&all).await
    }

    async fn remove(&self, component: &str) -> Result<(), TransportError> {
        let mut all = self.all.lock().await;
        if all.remove(component).is_none() {
            return Ok(());
        }
        self.write(&all).await
    }
}

impl FileOffsetStore {
    /// Replaces the file with `all`.
    async fn write(
        &self,
        all: &BTreeMap<String, BTreeMap<String, Value>>,
    ) -> Result<(), TransportError> {
        let bytes = serde_json::to_vec_pretty(all)
            .map_err(|e| TransportError::fatal(format!("cannot encode offsets: {e}")))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| TransportError::fatal(format!("offset writer panicked: {e}")))?
            .map_err(|e| TransportError::transient(format!("cannot write source offsets: {e}")))
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_offsets_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileOffsetStore::open(dir.path(), "p").unwrap();
        let offsets = HashMap::from([("a.csv".to_string(), serde_json::json!({"byte": 10}))]);
        store.store("src", offsets.clone()).await.unwrap();
        let reopened = FileOffsetStore::open(dir.path(), "p").unwrap();
        assert_eq!(reopened.load("src").await.unwrap(), offsets);
        assert!(reopened.load("other").await.unwrap().is_empty());
        reopened.remove("src").await.unwrap();
        let after_reset = FileOffsetStore::open(dir.path(), "p").unwrap();
        assert!(after_reset.load("src").await.unwrap().is_empty());
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_pipeline_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::take(dir.path(), "p").unwrap();
        let e = StateLock::take(dir.path(), "p").unwrap_err();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("`p`"),
            "{e}"
        );
        // Another pipeline in the same state dir is free.
        let _other = StateLock::take(dir.path(), "q").unwrap();
        drop(held);
        StateLock::take(dir.path(), "p").unwrap();
    }
}
