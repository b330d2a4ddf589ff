//! Lumen's model download manager (in progress, issue 5).
//!
//! So far: validation of everything that names a file on disk — repository
//! ids, revisions and file paths from the network or the user
//! ([`names`]) — the Hugging Face cache layout ([`cache`]), shared with
//! other tools (`huggingface-cli`, transformers, llama.cpp's downloader), so
//! a model downloaded by one is found by the others — and one overall
//! progress for several files that never goes backwards ([`progress`]).

pub mod cache;
pub mod names;
pub mod progress;

pub use cache::HubCache;
pub use names::{NameError, RepoFile, RepoId, Revision};
pub use progress::{Progress, ProgressSnapshot};
