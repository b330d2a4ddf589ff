//! Models: the catalogue with what fits this machine, installed models,
//! and downloads the UI can pause, resume and cancel, reported as
//! [`CoreEvent::Download`] events.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use lumen_hub::catalogue::{DEFAULT_CONTEXT, system_memory};
use lumen_hub::library::split_spec;
use lumen_hub::token::TokenSource;
use lumen_hub::{
    Catalogue, CatalogueModel, DownloadEvent, DownloadHandle, DownloadOptions, Downloader, Fit,
    HubClient, InstalledModel, MemoryEstimate, Variant,
};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::error::{CoreError, Result};
use crate::events::CoreEvent;
use crate::{Core, lock};

/// A catalogue model as the models page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CatalogueEntry {
    /// The catalogue's entry.
    pub model: CatalogueModel,
    /// Each variant with its memory need, fit and whether it is installed.
    pub variants: Vec<VariantStatus>,
}

/// A variant's status on this machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct VariantStatus {
    /// The variant.
    pub variant: Variant,
    /// `model-id:variant-id`, what [`Core::start_download`] takes.
    pub spec: String,
    /// Memory needed at the default context.
    pub memory: MemoryEstimate,
    /// Whether that fits this machine.
    pub fit: Fit,
    /// Already downloaded.
    pub installed: bool,
}

/// A download's state, for a list in the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DownloadStatus {
    /// Its id (in [`CoreEvent::Download`] too).
    pub id: u64,
    /// What was asked for.
    pub spec: String,
    /// The latest event.
    pub last: Option<DownloadEvent>,
    /// Still running (or paused).
    pub active: bool,
}

/// An installed model as the app shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LocalModel {
    /// The model.
    #[serde(flatten)]
    #[cfg_attr(feature = "ts", ts(flatten))]
    pub model: InstalledModel,
    /// Whether it reads images (Llama 3.2 Vision).
    pub vision: bool,
}

impl From<InstalledModel> for LocalModel {
    fn from(model: InstalledModel) -> Self {
        let vision = lumen_engine::model::is_vision_model(&model.path);
        Self { model, vision }
    }
}

/// Whether a Hugging Face token is set, and where it comes from (never
/// the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TokenStatus {
    /// A token is set.
    pub present: bool,
    /// Where it comes from: the environment wins over the keyring, which
    /// wins over Hugging Face's own token file.
    pub source: Option<TokenSource>,
}

impl TokenStatus {
    fn now() -> Self {
        let source = lumen_hub::token::load().map(|(_, source)| source);
        Self {
            present: source.is_some(),
            source,
        }
    }
}

/// A download the core runs.
pub(crate) struct DownloadEntry {
    spec: String,
    /// The repository it downloads into, however it was named.
    repo: String,
    handle: Arc<DownloadHandle>,
    last: Option<DownloadEvent>,
    active: bool,
}

impl Core {
    /// The catalogue, each variant with its memory need and whether it fits
    /// and is installed.
    pub fn catalogue(&self) -> Result<Vec<CatalogueEntry>> {
        let catalogue = Catalogue::builtin()?;
        let installed = self.library.installed();
        let (total, available) = system_memory();
        Ok(catalogue
            .models
            .into_iter()
            .map(|model| {
                let variants = model
                    .variants
                    .iter()
                    .map(|v| {
                        let memory = model.memory(v, DEFAULT_CONTEXT, None);
                        VariantStatus {
                            spec: format!("{}:{}", model.id, v.id),
                            fit: memory.fit(total, available),
                            memory,
                            installed: is_installed(&installed, v),
                            variant: v.clone(),
                        }
                    })
                    .collect();
                CatalogueEntry { model, variants }
            })
            .collect())
    }

    /// The models on this machine.
    pub fn installed_models(&self) -> Vec<LocalModel> {
        self.library
            .installed()
            .into_iter()
            .map(LocalModel::from)
            .collect()
    }

    /// Deletes a downloaded model (`owner/name[:file]`) or forgets an
    /// import; returns the bytes freed. Refused while it downloads.
    pub fn delete_model(&self, spec: &str) -> Result<u64> {
        let busy = lock(&self.downloads)
            .values()
            .any(|d| d.active && d.repo.eq_ignore_ascii_case(split_spec(spec).0));
        if busy {
            return Err(CoreError::new(
                "busy",
                format!("`{spec}` is downloading: cancel the download first"),
            ));
        }
        Ok(self.library.remove(spec)?)
    }

    /// Records a local GGUF file or model folder as `local/NAME`.
    pub fn import_model(&self, path: &Path) -> Result<LocalModel> {
        Ok(self.library.import(path)?.into())
    }

    /// Whether a Hugging Face token is set (for gated models).
    pub fn token_status(&self) -> TokenStatus {
        TokenStatus::now()
    }

    /// Keeps a Hugging Face token in the OS keyring.
    pub fn set_token(&self, secret: &str) -> Result<TokenStatus> {
        lumen_hub::token::save(&lumen_hub::token::Token::parse(secret)?)?;
        Ok(TokenStatus::now())
    }

    /// Removes the token from the OS keyring.
    pub fn clear_token(&self) -> Result<TokenStatus> {
        lumen_hub::token::delete()?;
        Ok(TokenStatus::now())
    }

    /// Starts downloading a model named as users write it (catalogue id
    /// `[:variant]` or `owner/name[:file]`); progress comes as events.
    /// Checks the name, the Hub's listing, access and disk space first.
    pub async fn start_download(self: &Arc<Self>, spec: &str) -> Result<u64> {
        let target = Catalogue::builtin()?.target(spec, "main")?;
        let token = lumen_hub::token::load().map(|(t, _)| t);
        let client = HubClient::new(&self.endpoint, token)?;
        let downloader = Downloader::new(
            client,
            self.library.cache().clone(),
            DownloadOptions::default(),
        );
        let plan = downloader.plan(&target.request).await?;
        let handle = Arc::new(downloader.start(plan));
        let mut events = handle.subscribe();
        let id = {
            let mut downloads = lock(&self.downloads);
            let id = downloads.keys().next_back().map_or(1, |k| k + 1);
            downloads.insert(
                id,
                DownloadEntry {
                    spec: spec.to_string(),
                    repo: target.request.repo.to_string(),
                    handle: handle.clone(),
                    last: None,
                    active: true,
                },
            );
            id
        };
        let core = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let end = matches!(
                            event,
                            DownloadEvent::Finished { .. }
                                | DownloadEvent::Failed { .. }
                                | DownloadEvent::Cancelled
                        );
                        if let Some(d) = lock(&core.downloads).get_mut(&id) {
                            d.last = Some(event.clone());
                            d.active = !end;
                        }
                        core.emit(CoreEvent::Download { id, event });
                        if end {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok(id)
    }

    fn download(&self, id: u64) -> Result<Arc<DownloadHandle>> {
        lock(&self.downloads)
            .get(&id)
            .filter(|d| d.active)
            .map(|d| d.handle.clone())
            .ok_or_else(|| CoreError::new("not_found", format!("no running download {id}")))
    }

    /// Pauses a download (its partial files stay).
    pub fn pause_download(&self, id: u64) -> Result<()> {
        self.download(id)?.pause();
        Ok(())
    }

    /// Continues a paused download.
    pub fn resume_download(&self, id: u64) -> Result<()> {
        self.download(id)?.resume();
        Ok(())
    }

    /// Cancels a download and deletes its partial files.
    pub fn cancel_download(&self, id: u64) -> Result<()> {
        self.download(id)?.cancel();
        Ok(())
    }

    /// Downloads this session, newest last.
    pub fn downloads(&self) -> Vec<DownloadStatus> {
        lock(&self.downloads)
            .iter()
            .map(|(id, d)| DownloadStatus {
                id: *id,
                spec: d.spec.clone(),
                last: d.last.clone(),
                active: d.active,
            })
            .collect()
    }
}

fn is_installed(installed: &[InstalledModel], v: &Variant) -> bool {
    installed.iter().any(|m| {
        m.id.eq_ignore_ascii_case(&v.repo)
            && (v.files.is_empty() || v.files.iter().all(|f| m.gguf_files.contains(f)))
    })
}

/// The downloads of a session.
pub(crate) type Downloads = BTreeMap<u64, DownloadEntry>;
