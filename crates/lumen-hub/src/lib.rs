//! Lumen's model download manager.
//!
//! - [`names`]: repository ids, revisions and file paths from the network
//!   or the user, checked before they touch the filesystem;
//! - [`cache`]: the Hugging Face cache layout, shared with other tools
//!   (`huggingface-cli`, transformers, llama.cpp's downloader), so a model
//!   downloaded by one is found by the others;
//! - [`api`]: the Hub's HTTP API (file lists with sizes and hashes);
//! - [`download`]: resumable, verified, pausable downloads with one
//!   overall [`progress`] that never goes backwards;
//! - [`token`]: the Hugging Face token for gated repositories, in the OS
//!   keyring;
//! - [`catalogue`]: the curated Llama 3.2 / 3.3 catalogue with memory
//!   estimates;
//! - [`library`]: the models on this machine (downloaded or imported).
//!
//! Pulling a model and finding it again (here from a local stand-in for
//! the Hub; the public Hub is [`api::DEFAULT_ENDPOINT`]):
//!
//! ```
//! # use lumen_testhub::{HubFile, HubRepo, TestHub};
//! use lumen_hub::{DownloadEvent, DownloadOptions, Downloader, HubCache, HubClient};
//! use lumen_hub::{Library, PullRequest, RepoFile, RepoId, Revision};
//!
//! # let hub = TestHub::start()?;
//! # hub.add_repo(HubRepo::new("bartowski/Llama-3.2-1B-Instruct-GGUF",
//! #     vec![HubFile::bytes("Llama-3.2-1B-Instruct-Q4_K_M.gguf", b"GGUF...".to_vec())]));
//! # let dir = tempfile::tempdir()?;
//! let cache = HubCache::new(dir.path()); // or HubCache::from_env()
//! let client = HubClient::new(&hub.url(), None)?;
//! let downloader = Downloader::new(client, cache.clone(), DownloadOptions::default());
//! let request = PullRequest::parse(
//!     "bartowski/Llama-3.2-1B-Instruct-GGUF",
//!     "main",
//!     &["Llama-3.2-1B-Instruct-Q4_K_M.gguf"],
//! )?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! let pulled = runtime.block_on(downloader.pull(&request, |event| {
//!     if let DownloadEvent::Progress { done, total, .. } = event {
//!         println!("{done} / {total} bytes");
//!     }
//! }))?;
//! let library = Library::new(cache, dir.path().join("imports.json"));
//! let path = library.resolve("bartowski/Llama-3.2-1B-Instruct-GGUF")?;
//! assert_eq!(path, pulled.files[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod cache;
pub mod catalogue;
pub mod download;
pub mod error;
pub mod hash;
pub mod library;
pub mod names;
pub mod progress;
pub mod token;

pub use api::{HubClient, RemoteFile, RepoInfo};
pub use cache::HubCache;
pub use catalogue::{Catalogue, CatalogueModel, Fit, MemoryEstimate, Target, Variant};
pub use download::{
    Control, DownloadEvent, DownloadHandle, DownloadOptions, Downloader, Plan, PullRequest, Pulled,
};
pub use error::{HubError, human_bytes};
pub use hash::FileHash;
pub use library::{InstalledModel, Library, ModelKind};
pub use names::{NameError, RepoFile, RepoId, Revision};
pub use progress::{Progress, ProgressSnapshot};
pub use token::Token;
