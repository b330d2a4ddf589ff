//! The models on this machine: complete snapshots in the Hugging Face
//! cache (Lumen's downloads and other tools'), and local files or folders
//! the user imported. Listing, resolving a name to a path, deleting, and
//! importing.
//!
//! Imports are recorded, not copied (a 40 GB file stays where it is), in a
//! small JSON file Lumen owns; deleting an import forgets it and never
//! touches the user's file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{HubCache, is_blob_name};
use crate::error::HubError;
use crate::names::{RepoFile, RepoId, Revision};

/// The owner part of imported models' names: `local/<name>`.
pub const LOCAL_OWNER: &str = "local";

/// What a model is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum ModelKind {
    /// GGUF files.
    Gguf,
    /// A safetensors folder with `config.json`.
    Safetensors,
}

/// A model on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct InstalledModel {
    /// `owner/name` (`local/<name>` for imports).
    pub id: String,
    /// The snapshot folder, or the imported file or folder.
    pub path: PathBuf,
    /// The commit, for downloads.
    pub commit: Option<String>,
    /// GGUF or safetensors.
    pub kind: ModelKind,
    /// The GGUF files (relative to `path`; empty for safetensors and for an
    /// imported single file).
    pub gguf_files: Vec<String>,
    /// Bytes on disk.
    pub size: u64,
    /// Imported by the user rather than downloaded.
    pub imported: bool,
}

/// An import record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Import {
    name: String,
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Imports {
    version: u32,
    models: Vec<Import>,
}

/// The installed models.
#[derive(Debug, Clone)]
pub struct Library {
    cache: HubCache,
    imports_file: PathBuf,
}

impl Library {
    /// A library over `cache`, with imports recorded in `imports_file`.
    pub fn new(cache: HubCache, imports_file: impl Into<PathBuf>) -> Self {
        Self {
            cache,
            imports_file: imports_file.into(),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// Every installed model: downloads first (by id), then imports. A
    /// snapshot missing files (an interrupted download by another tool) is
    /// left out; so is an import whose file has gone.
    pub fn installed(&self) -> Vec<InstalledModel> {
        let mut out: Vec<InstalledModel> = self
            .cache
            .repos()
            .into_iter()
            .filter_map(|repo| self.downloaded(&repo))
            .collect();
        out.extend(
            self.read_imports()
                .models
                .into_iter()
                .filter_map(|i| describe_import(&i).ok()),
        );
        out
    }

    /// A downloaded repository's current snapshot, if complete.
    fn downloaded(&self, repo: &RepoId) -> Option<InstalledModel> {
        let main = Revision::parse("main").ok()?;
        let snapshots = self.cache.snapshots(repo);
        let commit = self
            .cache
            .read_ref(repo, &main)
            .filter(|c| snapshots.contains(c))
            .or_else(|| newest(&self.cache, repo, &snapshots))?;
        let dir = self.cache.snapshot_dir(repo, &commit)?;
        let files = snapshot_files(&dir);
        if files.iter().any(|(_, ok)| !ok) {
            return None;
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let (kind, gguf_files) = classify(&dir, &names)?;
        let size = self.repo_size(repo);
        Some(InstalledModel {
            id: repo.to_string(),
            path: dir,
            commit: Some(commit),
            kind,
            gguf_files,
            size,
            imported: false,
        })
    }

    /// Bytes of a repository's blobs.
    fn repo_size(&self, repo: &RepoId) -> u64 {
        std::fs::read_dir(self.cache.repo_dir(repo).join("blobs"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The path to load for `spec`: `owner/name` or `owner/name:FILE`
    /// (which GGUF file, when there are several), or `local/<name>`.
    pub fn resolve(&self, spec: &str) -> Result<PathBuf, HubError> {
        let (id, file) = split_spec(spec);
        let model = self
            .installed()
            .into_iter()
            .find(|m| m.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| HubError::NotInstalled(id.to_string()))?;
        match (model.kind, file) {
            (ModelKind::Gguf, Some(f)) => {
                let f = RepoFile::parse(f)?;
                if model.gguf_files.iter().any(|g| g == f.as_str()) {
                    Ok(f.parts().fold(model.path, |p, part| p.join(part)))
                } else {
                    Err(HubError::FileNotFound {
                        repo: model.id,
                        file: f.to_string(),
                        choices: model.gguf_files,
                    })
                }
            }
            (ModelKind::Gguf, None) => match model.gguf_files.as_slice() {
                [] => Ok(model.path),
                [one] => Ok(model.path.join(one)),
                _ => Err(HubError::ChooseFile {
                    repo: model.id,
                    choices: model.gguf_files,
                }),
            },
            (ModelKind::Safetensors, _) => Ok(model.path),
        }
    }

    /// Deletes a model (or with `:FILE`, one GGUF file of it) and returns
    /// the bytes freed. Imports are only forgotten (0 bytes).
    pub fn remove(&self, spec: &str) -> Result<u64, HubError> {
        let (id, file) = split_spec(spec);
        if let Some(name) = id.strip_prefix("local/") {
            let mut imports = self.read_imports();
            let before = imports.models.len();
            imports
                .models
                .retain(|i| !i.name.eq_ignore_ascii_case(name));
            if imports.models.len() == before {
                return Err(HubError::NotInstalled(id.to_string()));
            }
            self.write_imports(&imports)?;
            return Ok(0);
        }
        let repo = RepoId::parse(id)?;
        let dir = self.cache.repo_dir(&repo);
        if !dir.is_dir() {
            return Err(HubError::NotInstalled(id.to_string()));
        }
        match file {
            None => {
                let freed = self.repo_size(&repo);
                std::fs::remove_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
                Ok(freed)
            }
            Some(f) => self.remove_file(&repo, &RepoFile::parse(f)?),
        }
    }

    /// Removes one file from every snapshot, and its blob when nothing
    /// else links to it.
    fn remove_file(&self, repo: &RepoId, file: &RepoFile) -> Result<u64, HubError> {
        let mut blobs = Vec::new();
        let mut found = false;
        for commit in self.cache.snapshots(repo) {
            let Some(p) = self.cache.snapshot_file(repo, &commit, file) else {
                continue;
            };
            if std::fs::symlink_metadata(&p).is_err() {
                continue;
            }
            found = true;
            if let Some(blob) = blob_of(&p) {
                blobs.push(blob);
            }
            std::fs::remove_file(&p).map_err(|e| HubError::io(&p, e))?;
        }
        if !found {
            return Err(HubError::NotInstalled(format!("{repo}:{file}")));
        }
        let still_linked: Vec<String> = self
            .cache
            .snapshots(repo)
            .iter()
            .filter_map(|c| self.cache.snapshot_dir(repo, c))
            .flat_map(|d| walk_links(&d))
            .filter_map(|p| blob_of(&p))
            .collect();
        let mut freed = 0;
        for blob in blobs {
            if still_linked.contains(&blob) {
                continue;
            }
            if let Some(path) = self.cache.blob(repo, &blob) {
                freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(|e| HubError::io(&path, e))?;
            }
        }
        Ok(freed)
    }

    /// Records a local GGUF file or model folder as `local/<name>`.
    pub fn import(&self, path: &Path) -> Result<InstalledModel, HubError> {
        let bad = |reason: &str| HubError::Import {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let path = std::fs::canonicalize(path).map_err(|e| bad(&e.to_string()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| bad("the name is not valid UTF-8"))?;
        let base: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches(['.', '-'])
            .chars()
            .take(80)
            .collect();
        let base = if base.is_empty() {
            "model".to_string()
        } else {
            base
        };
        let mut imports = self.read_imports();
        if let Some(existing) = imports.models.iter().find(|i| i.path == path) {
            return describe_import(existing);
        }
        let taken = |n: &str| {
            imports
                .models
                .iter()
                .any(|i| i.name.eq_ignore_ascii_case(n))
        };
        let mut name = base.clone();
        let mut k = 2;
        while taken(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        let record = Import { name, path };
        let model = describe_import(&record)?;
        imports.models.push(record);
        self.write_imports(&imports)?;
        Ok(model)
    }

    fn read_imports(&self) -> Imports {
        std::fs::read(&self.imports_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Imports {
                version: 1,
                models: Vec::new(),
            })
    }

    fn write_imports(&self, imports: &Imports) -> Result<(), HubError> {
        let path = &self.imports_file;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        }
        let json = serde_json::to_vec_pretty(&Imports {
            version: 1,
            models: imports.models.clone(),
        })
        .map_err(|e| HubError::io(path, std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
    }
}

/// `owner/name:FILE` → (`owner/name`, `FILE`).
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((id, file)) if !file.is_empty() => (id, Some(file)),
        Some((id, _)) => (id, None),
        None => (spec, None),
    }
}

/// The newest snapshot by modification time.
fn newest(cache: &HubCache, repo: &RepoId, snapshots: &[String]) -> Option<String> {
    snapshots
        .iter()
        .filter_map(|c| {
            let t = std::fs::metadata(cache.snapshot_dir(repo, c)?)
                .and_then(|m| m.modified())
                .ok()?;
            Some((t, c.clone()))
        })
        .max()
        .map(|(_, c)| c)
}

/// The files of a snapshot (relative paths) and whether each resolves to
/// a complete file.
fn snapshot_files(dir: &Path) -> Vec<(String, bool)> {
    walk_links(dir)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(dir).ok()?.to_str()?.replace('\\', "/");
            Some((rel, p.is_file()))
        })
        .collect()
}

/// Files and links under `dir` (not following directory links).
fn walk_links(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk_links(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out.sort();
    out
}

/// The blob a snapshot link points to.
fn blob_of(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    is_blob_name(&name).then_some(name)
}

/// GGUF files, or a safetensors model (with every shard its index names).
fn classify(dir: &Path, names: &[&str]) -> Option<(ModelKind, Vec<String>)> {
    let ggufs: Vec<String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        .map(|n| n.to_string())
        .collect();
    if !ggufs.is_empty() {
        return Some((ModelKind::Gguf, ggufs));
    }
    let has = |n: &str| names.contains(&n);
    if !has("config.json") || !names.iter().any(|n| n.ends_with(".safetensors")) {
        return None;
    }
    if has("model.safetensors.index.json") {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).ok()?)
                .ok()?;
        let shards = index.get("weight_map")?.as_object()?;
        if shards.values().filter_map(|v| v.as_str()).any(|s| !has(s)) {
            return None;
        }
    }
    Some((ModelKind::Safetensors, Vec::new()))
}

/// Checks an import and describes it.
fn describe_import(i: &Import) -> Result<InstalledModel, HubError> {
    let bad = |reason: &str| HubError::Import {
        path: i.path.clone(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(&i.path).map_err(|e| bad(&e.to_string()))?;
    let id = format!("{LOCAL_OWNER}/{}", i.name);
    if meta.is_file() {
        let mut magic = [0u8; 4];
        std::fs::File::open(&i.path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map_err(|e| bad(&format!("cannot read it: {e}")))?;
        if &magic != b"GGUF" {
            return Err(bad("not a GGUF file (it does not start with `GGUF`)"));
        }
        return Ok(InstalledModel {
            id,
            path: i.path.clone(),
            commit: None,
            kind: ModelKind::Gguf,
            gguf_files: Vec::new(),
            size: meta.len(),
            imported: true,
        });
    }
    let files = walk_links(&i.path);
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| {
            p.strip_prefix(&i.path)
                .ok()?
                .to_str()
                .map(|s| s.replace('\\', "/"))
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (kind, gguf_files) = classify(&i.path, &refs).ok_or_else(|| {
        bad("expected a GGUF file, or a folder with config.json and .safetensors weights (all shards)")
    })?;
    let size = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    Ok(InstalledModel {
        id,
        path: i.path.clone(),
        commit: None,
        kind,
        gguf_files,
        size,
        imported: true,
    })
}
