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
pub use catalogue::{Catalogue, CatalogueModel, Fit, MemoryEstimate, Variant};
pub use download::{
    Control, DownloadEvent, DownloadHandle, DownloadOptions, Downloader, Plan, PullRequest, Pulled,
};
pub use error::{HubError, human_bytes};
pub use hash::FileHash;
pub use library::{InstalledModel, Library, ModelKind};
pub use names::{NameError, RepoFile, RepoId, Revision};
pub use progress::{Progress, ProgressSnapshot};
pub use token::Token;
