//! Lumen's use cases, shared by the desktop app and tests: chat with the
//! history kept in SQLite, models (catalogue, downloads, installed), search.
//! No Tauri types here: the app is a thin shell that calls [`Core`] and
//! forwards its [`CoreEvent`]s.
//!
//! - [`Core::send`] stores the user's message, starts the reply and returns
//!   at once; the reply streams as [`CoreEvent::Token`]s while it is written
//!   to the history (every 250 ms), and ends with
//!   [`CoreEvent::ReplyFinished`] or [`CoreEvent::ReplyFailed`].
//!   [`Core::stop`] ends it within a token.
//! - One model is loaded at a time (on first use, on a blocking thread),
//!   and the live conversation keeps its KV cache between turns; a
//!   conversation reopened from the history is rebuilt from its messages.
//! - [`Core::catalogue`] says what fits this machine;
//!   [`Core::start_download`] downloads with pause/resume/cancel, reported
//!   as [`CoreEvent::Download`]; installed models can be deleted or
//!   imported.

mod chat;
mod error;
mod events;
mod images;
mod models;
pub mod settings;
mod views;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lumen_engine::{LoadOptions, Model};
use lumen_hub::{HubCache, Library};
use lumen_store::{ConversationId, Store};
use tokio::sync::broadcast;

pub use chat::{ChatSettings, EditRequest, RegenerateRequest, ReplyStarted, SendRequest};
pub use error::{CoreError, Result};
pub use events::{CoreEvent, DropEvent};
pub use images::{ImageInput, ImagePreview};
pub use models::{CatalogueEntry, DownloadStatus, LocalModel, TokenStatus, VariantStatus};
pub use settings::{AppSettings, SystemInfo, Theme};
pub use views::{AttachmentView, ConversationView, MessageView};

/// Re-exported for the app's `main` (see its docs).
pub use lumen_engine::alloc;
pub use lumen_engine::device::set_compute_threads;

/// Logs to stderr at the level `LUMEN_LOG` sets (`warn` when unset; any
/// `tracing` filter, such as `lumen_engine=debug`). For the app and the CLI,
/// once, first thing.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LUMEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Where the core keeps things.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The data folder: the history database, attachments, imports.
    pub data_dir: PathBuf,
    /// The Hugging Face cache, where downloaded models are.
    pub hub_cache: HubCache,
    /// How models are loaded (device, dtype, quantization).
    pub load_options: LoadOptions,
    /// The Hugging Face Hub (or a mirror) downloads come from.
    pub endpoint: String,
    /// The settings file ([`settings::settings_file`]).
    pub settings_file: PathBuf,
}

impl CoreConfig {
    /// The platform's folders and the user's settings (`LUMEN_DATA_DIR`,
    /// `LUMEN_CONFIG_DIR`, `HF_HUB_CACHE`, … honoured): the data folder is
    /// `LUMEN_DATA_DIR`, else the one chosen in the settings, else the
    /// platform's; models load on the device chosen in the settings.
    pub fn from_env() -> Result<Self> {
        let settings_file = settings::settings_file()?;
        let settings = AppSettings::load(&settings_file);
        // LUMEN_DATA_DIR, else the folder chosen in the settings, else the
        // platform's.
        let data_dir = match &settings.data_dir {
            Some(chosen) if std::env::var_os("LUMEN_DATA_DIR").is_none_or(|d| d.is_empty()) => {
                chosen.clone()
            }
            _ => lumen_store::data_dir()?,
        };
        let hub_cache = HubCache::from_env()
            .ok_or_else(|| CoreError::new("config", "no cache folder: set HF_HUB_CACHE or HOME"))?;
        Ok(Self {
            data_dir,
            hub_cache,
            load_options: LoadOptions {
                device: settings.device_request(),
                ..LoadOptions::default()
            },
            endpoint: lumen_hub::api::endpoint_from_env(),
            settings_file,
        })
    }
}

/// The loaded model and the live conversation.
#[derive(Default)]
struct EngineState {
    /// The model, by the path it was loaded from.
    model: Option<(PathBuf, Arc<Model>)>,
    /// The conversation whose KV cache is kept.
    live: Option<chat::LiveChat>,
}

/// The application core. Cheap to share (`Arc`); every method takes `&self`.
pub struct Core {
    store: Store,
    library: Library,
    /// How the next model loads (the device follows the settings).
    load_options: Mutex<LoadOptions>,
    endpoint: String,
    settings_file: PathBuf,
    events: broadcast::Sender<CoreEvent>,
    engine: Arc<Mutex<EngineState>>,
    running: Mutex<HashMap<ConversationId, chat::Running>>,
    /// Woken whenever a reply ends (its entry left `running`).
    reply_ended: tokio::sync::Notify,
    downloads: Mutex<models::Downloads>,
}

/// Locks a mutex; a panic elsewhere while it was held does not make the
/// data unusable here (every critical section leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("data_dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens the history (creating or migrating it) and the model library.
    pub async fn open(config: CoreConfig) -> Result<Arc<Self>> {
        let store = Store::open(&config.data_dir).await?;
        let library = Library::new(
            config.hub_cache,
            config.data_dir.join("imported-models.json"),
        );
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Self {
            store,
            library,
            load_options: Mutex::new(config.load_options),
            endpoint: config.endpoint,
            settings_file: config.settings_file,
            events,
            engine: Arc::new(Mutex::new(EngineState::default())),
            running: Mutex::new(HashMap::new()),
            reply_ended: tokio::sync::Notify::new(),
            downloads: Mutex::new(models::Downloads::new()),
        }))
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.events.subscribe()
    }

    /// The history.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The installed models.
    pub fn library(&self) -> &Library {
        &self.library
    }

    fn emit(&self, event: CoreEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// The settings as saved.
    pub fn app_settings(&self) -> AppSettings {
        AppSettings::load(&self.settings_file)
    }

    /// Checks and saves the settings; the device applies to the next model
    /// loaded, the data folder from the next start.
    pub fn save_app_settings(&self, settings: &AppSettings) -> Result<AppSettings> {
        let saved = settings.save(&self.settings_file)?;
        lock(&self.load_options).device = saved.device_request();
        Ok(saved)
    }

    /// Facts for the settings page.
    pub fn system_info(&self) -> SystemInfo {
        SystemInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            devices: settings::choosable_devices(),
            total_memory: lumen_hub::catalogue::system_memory().0,
            data_dir: self.store.dir().to_path_buf(),
            default_data_dir: lumen_store::default_data_dir(),
            settings_file: self.settings_file.clone(),
            hub_cache: self.library.cache().root().to_path_buf(),
        }
    }

    /// Closes the history (waits for pending writes).
    pub async fn close(&self) {
        self.store.close().await;
    }
}
