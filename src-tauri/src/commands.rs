//! The commands the UI calls: each takes the core, calls one function and
//! returns its result or a `{code, message}` error.

use std::path::PathBuf;
use std::sync::Arc;

use lumen_core::{CatalogueEntry, Core, CoreError, DownloadStatus, ReplyStarted, SendRequest};
use lumen_hub::InstalledModel;
use lumen_store::{Conversation, ConversationId, Message, SearchFilters, SearchHit};
use tauri::State;

type Result<T> = std::result::Result<T, CoreError>;

/// Sends a message; the reply streams as `core://event`s.
#[tauri::command]
pub async fn send_message(
    core: State<'_, Arc<Core>>,
    request: SendRequest,
) -> Result<ReplyStarted> {
    core.send(request).await
}

/// Stops the reply being written in a conversation.
#[tauri::command]
pub fn stop_reply(core: State<'_, Arc<Core>>, conversation_id: ConversationId) -> bool {
    core.stop(conversation_id)
}

/// The conversations, pinned and newest first.
#[tauri::command]
pub async fn list_conversations(core: State<'_, Arc<Core>>) -> Result<Vec<Conversation>> {
    Ok(core.store().list_conversations(false).await?)
}

/// A conversation's messages.
#[tauri::command]
pub async fn get_messages(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
) -> Result<Vec<Message>> {
    Ok(core.store().messages(conversation_id).await?)
}

/// Renames a conversation.
#[tauri::command]
pub async fn rename_conversation(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
    title: String,
) -> Result<()> {
    Ok(core
        .store()
        .rename_conversation(conversation_id, &title)
        .await?)
}

/// Deletes a conversation and its messages.
#[tauri::command]
pub async fn delete_conversation(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
) -> Result<()> {
    Ok(core.store().delete_conversation(conversation_id).await?)
}

/// Searches the history.
#[tauri::command]
pub async fn search_history(
    core: State<'_, Arc<Core>>,
    query: String,
    filters: Option<SearchFilters>,
    page: Option<usize>,
) -> Result<Vec<SearchHit>> {
    Ok(core
        .store()
        .search(&query, &filters.unwrap_or_default(), page.unwrap_or(0))
        .await?)
}

/// The catalogue with memory fit and installed state.
#[tauri::command]
pub fn catalogue(core: State<'_, Arc<Core>>) -> Result<Vec<CatalogueEntry>> {
    core.catalogue()
}

/// The models on this machine.
#[tauri::command]
pub fn installed_models(core: State<'_, Arc<Core>>) -> Vec<InstalledModel> {
    core.installed_models()
}

/// Starts a download; progress comes as `core://event`s.
#[tauri::command]
pub async fn start_download(core: State<'_, Arc<Core>>, spec: String) -> Result<u64> {
    core.inner().start_download(&spec).await
}

/// Pauses a download.
#[tauri::command]
pub fn pause_download(core: State<'_, Arc<Core>>, id: u64) -> Result<()> {
    core.pause_download(id)
}

/// Resumes a download.
#[tauri::command]
pub fn resume_download(core: State<'_, Arc<Core>>, id: u64) -> Result<()> {
    core.resume_download(id)
}

/// Cancels a download.
#[tauri::command]
pub fn cancel_download(core: State<'_, Arc<Core>>, id: u64) -> Result<()> {
    core.cancel_download(id)
}

/// This session's downloads.
#[tauri::command]
pub fn downloads(core: State<'_, Arc<Core>>) -> Vec<DownloadStatus> {
    core.downloads()
}

/// Deletes a model; returns the bytes freed.
#[tauri::command]
pub fn delete_model(core: State<'_, Arc<Core>>, spec: String) -> Result<u64> {
    core.delete_model(&spec)
}

/// Imports a local GGUF file or model folder.
#[tauri::command]
pub fn import_model(core: State<'_, Arc<Core>>, path: PathBuf) -> Result<InstalledModel> {
    core.import_model(&path)
}
