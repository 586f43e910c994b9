//! The SHA-256 of model weights for image metadata (A1111's "Model hash", InvokeAI's
//! `model_hash`), remembered by path, size and modification time so that a checkpoint of
//! several GB is read once, not at every start.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Known {
    size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    modified: u128,
    sha256: String,
}

/// Hashes already computed, kept in a JSON file.
pub struct HashCache {
    file: Option<PathBuf>,
    known: BTreeMap<String, Known>,
}

impl HashCache {
    /// The cache in `$XDG_CACHE_HOME/dream` (or `~/.cache/dream`); empty if there is none.
    pub fn open_default() -> HashCache {
        let folder = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        HashCache::open(folder.map(|f| f.join("dream/model_hashes.json")))
    }

    /// The cache kept in `file` (`None`: in memory only). An unreadable cache starts empty.
    pub fn open(file: Option<PathBuf>) -> HashCache {
        let known = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        HashCache { file, known }
    }

    /// The hex SHA-256 of the file at `path`.
    pub fn sha256(&mut self, path: &Path) -> Result<String> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let metadata = std::fs::metadata(&path)?;
        let modified = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = path.display().to_string();
        if let Some(known) = self.known.get(&key) {
            if known.size == metadata.len() && known.modified == modified {
                return Ok(known.sha256.clone());
            }
        }
        let sha256 = file_sha256(&path)?;
        self.known.insert(
            key,
            Known {
                size: metadata.len(),
                modified,
                sha256: sha256.clone(),
            },
        );
        self.save();
        Ok(sha256)
    }

    /// Best effort: without a writable cache, hashes are computed once per run.
    fn save(&self) {
        if let Some(file) = &self.file {
            if let Some(folder) = file.parent() {
                let _ = std::fs::create_dir_all(folder);
            }
            if let Ok(text) = serde_json::to_string_pretty(&self.known) {
                let _ = std::fs::write(file, text);
            }
        }
    }
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_and_remembered_until_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("dream-hashes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let weights = dir.join("w.bin");
        std::fs::write(&weights, "abc").unwrap();
        let cache_file = dir.join("cache/hashes.json");
        // FIPS 180-2's example: SHA-256("abc").
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            HashCache::open(Some(cache_file.clone()))
                .sha256(&weights)
                .unwrap(),
            abc
        );
        // A second run reads the cache: a planted value proves the file was not hashed again.
        let text = std::fs::read_to_string(&cache_file).unwrap();
        std::fs::write(&cache_file, text.replace(abc, "planted")).unwrap();
        let mut cache = HashCache::open(Some(cache_file.clone()));
        assert_eq!(cache.sha256(&weights).unwrap(), "planted");
        // A changed file is hashed again (its size changed).
        std::fs::write(&weights, "abcd").unwrap();
        assert_ne!(cache.sha256(&weights).unwrap(), "planted");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
