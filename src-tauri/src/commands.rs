//! The commands the UI calls: each takes the core, calls one function and
//! returns its result or a `{code, message}` error. The list of commands is
//! also in `build.rs` (each gets a permission) and in
//! `capabilities/default.json` (the ones the window may call).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use lumen_core::{
    AppSettings, CatalogueEntry, ChatSettings, ConversationView, Core, CoreError, DownloadStatus,
    DropEvent, EditRequest, ImageInput, ImagePreview, LocalModel, RegenerateRequest, ReplyStarted,
    SendRequest, SystemInfo, TokenStatus,
};
use lumen_store::{Conversation, ConversationId, SearchFilters, SearchHit};
use tauri::{AppHandle, Emitter, State};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};

type Result<T> = std::result::Result<T, CoreError>;

/// The files the user dropped on the window or picked in a dialog: the
/// only paths the UI may ask Rust to read.
#[derive(Debug, Default)]
pub struct Granted(Mutex<HashSet<PathBuf>>);

impl Granted {
    /// Grants `paths`.
    pub fn grant(&self, paths: &[PathBuf]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(paths.iter().cloned());
    }

    /// `Ok` when `path` was dropped or picked.
    fn check(&self, path: &Path) -> Result<()> {
        if self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(path)
        {
            Ok(())
        } else {
            Err(CoreError::new(
                "not_allowed",
                format!(
                    "{} was not dropped on the window or picked: drop it or use the attach button",
                    path.display()
                ),
            ))
        }
    }

    fn check_images(&self, images: &[ImageInput]) -> Result<()> {
        images.iter().try_for_each(|image| match image {
            ImageInput::Path { path } => self.check(path),
            ImageInput::Bytes { .. } => Ok(()),
        })
    }
}

/// Files dropped on the window: granted, then announced to the UI.
pub fn dropped(app: &AppHandle, granted: &Granted, paths: &[PathBuf]) {
    granted.grant(paths);
    let _ = app.emit(
        "lumen://drop",
        DropEvent::Drop {
            paths: paths.to_vec(),
        },
    );
}

/// The image types the attach dialog offers.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp"];

/// Runs a blocking native dialog off the async runtime's threads.
async fn dialog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::new("dialog", format!("the file dialog failed: {e}")))
}

/// Sends a message; the reply streams as `core://event`s.
#[tauri::command]
pub async fn send_message(
    core: State<'_, Arc<Core>>,
    granted: State<'_, Granted>,
    request: SendRequest,
) -> Result<ReplyStarted> {
    granted.check_images(&request.images)?;
    core.send(request).await
}

/// Writes another reply to the same question (the old one stays as a branch).
#[tauri::command]
pub async fn regenerate(
    core: State<'_, Arc<Core>>,
    request: RegenerateRequest,
) -> Result<ReplyStarted> {
    core.regenerate(request).await
}

/// Sends a new version of a question (the old one stays as a branch).
#[tauri::command]
pub async fn edit_message(
    core: State<'_, Arc<Core>>,
    request: EditRequest,
) -> Result<ReplyStarted> {
    core.edit(request).await
}

/// Stops the reply being written in a conversation.
#[tauri::command]
pub fn stop_reply(core: State<'_, Arc<Core>>, conversation_id: ConversationId) -> bool {
    core.stop(conversation_id)
}

/// Checks an attached image and returns its thumbnail.
#[tauri::command]
pub async fn preview_image(granted: State<'_, Granted>, image: ImageInput) -> Result<ImagePreview> {
    granted.check_images(std::slice::from_ref(&image))?;
    tauri::async_runtime::spawn_blocking(move || image.preview())
        .await
        .map_err(|e| CoreError::new("bad_image", format!("the image check failed: {e}")))?
}

/// The native dialog for images; the paths picked are granted.
#[tauri::command]
pub async fn pick_images(app: AppHandle, granted: State<'_, Granted>) -> Result<Vec<PathBuf>> {
    let picked = dialog(move || {
        app.dialog()
            .file()
            .set_title("Attach images")
            .add_filter("Images", IMAGE_EXTENSIONS)
            .blocking_pick_files()
    })
    .await?;
    let paths: Vec<PathBuf> = picked
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.into_path().ok())
        .collect();
    granted.grant(&paths);
    Ok(paths)
}

/// The conversations, pinned and newest first.
#[tauri::command]
pub async fn list_conversations(core: State<'_, Arc<Core>>) -> Result<Vec<Conversation>> {
    Ok(core.store().list_conversations(false).await?)
}

/// A conversation with every message, branch and thumbnail.
#[tauri::command]
pub async fn open_conversation(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
) -> Result<ConversationView> {
    core.open_conversation(conversation_id).await
}

/// Renames a conversation.
#[tauri::command]
pub async fn rename_conversation(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
    title: String,
) -> Result<()> {
    let title = title.trim();
    if title.is_empty() {
        return Err(CoreError::new(
            "invalid_argument",
            "a title cannot be empty",
        ));
    }
    Ok(core
        .store()
        .rename_conversation(conversation_id, title)
        .await?)
}

/// Pins or unpins a conversation.
#[tauri::command]
pub async fn set_pinned(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
    pinned: bool,
) -> Result<()> {
    Ok(core.store().set_pinned(conversation_id, pinned).await?)
}

/// Changes a conversation's system prompt and sampling settings.
#[tauri::command]
pub async fn set_conversation_settings(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
    system_prompt: Option<String>,
    settings: ChatSettings,
) -> Result<()> {
    core.set_conversation_settings(conversation_id, system_prompt, settings)
        .await
}

/// Deletes a conversation (stopping its reply first).
#[tauri::command]
pub async fn delete_conversation(
    core: State<'_, Arc<Core>>,
    conversation_id: ConversationId,
) -> Result<()> {
    core.delete_conversation(conversation_id).await
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
pub fn installed_models(core: State<'_, Arc<Core>>) -> Vec<LocalModel> {
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

/// The native dialog for a model file; the path picked is granted.
#[tauri::command]
pub async fn pick_model_file(
    app: AppHandle,
    granted: State<'_, Granted>,
) -> Result<Option<PathBuf>> {
    let picked = dialog(move || {
        app.dialog()
            .file()
            .set_title("Import a model file")
            .add_filter("GGUF models", &["gguf"])
            .blocking_pick_file()
    })
    .await?;
    let path = picked.and_then(|p| p.into_path().ok());
    if let Some(p) = &path {
        granted.grant(std::slice::from_ref(p));
    }
    Ok(path)
}

/// Imports a GGUF file or model folder the user picked or dropped.
#[tauri::command]
pub fn import_model(
    core: State<'_, Arc<Core>>,
    granted: State<'_, Granted>,
    path: PathBuf,
) -> Result<LocalModel> {
    granted.check(&path)?;
    core.import_model(&path)
}

/// Whether a Hugging Face token is set.
#[tauri::command]
pub fn token_status(core: State<'_, Arc<Core>>) -> TokenStatus {
    core.token_status()
}

/// Keeps a Hugging Face token in the OS keyring.
#[tauri::command]
pub fn set_token(core: State<'_, Arc<Core>>, token: String) -> Result<TokenStatus> {
    core.set_token(&token)
}

/// Removes the Hugging Face token from the OS keyring.
#[tauri::command]
pub fn clear_token(core: State<'_, Arc<Core>>) -> Result<TokenStatus> {
    core.clear_token()
}

/// The settings.
#[tauri::command]
pub fn app_settings(core: State<'_, Arc<Core>>) -> AppSettings {
    core.app_settings()
}

/// Checks and saves the settings.
#[tauri::command]
pub fn save_app_settings(core: State<'_, Arc<Core>>, settings: AppSettings) -> Result<AppSettings> {
    core.save_app_settings(&settings)
}

/// Version, devices, folders.
#[tauri::command]
pub fn system_info(core: State<'_, Arc<Core>>) -> SystemInfo {
    core.system_info()
}

/// For the end-to-end tests only (a debug build started with
/// `LUMEN_E2E=1`): acts as if `paths` were dropped on the window, which a
/// WebDriver cannot do. Refused otherwise.
#[tauri::command]
pub fn e2e_drop(app: AppHandle, granted: State<'_, Granted>, paths: Vec<PathBuf>) -> Result<()> {
    if !(cfg!(debug_assertions) && std::env::var("LUMEN_E2E").as_deref() == Ok("1")) {
        return Err(CoreError::new("not_allowed", "only for end-to-end tests"));
    }
    dropped(&app, &granted, &paths);
    Ok(())
}

/// Opens a web address from a reply in the user's browser, after they
/// confirm it in a native dialog that shows the whole address (model
/// output is untrusted: a link's words may say one site and point to
/// another). Only `http` and `https` addresses without credentials are
/// opened ([`web_address`]). Returns whether it was opened.
#[tauri::command]
pub async fn open_link(app: AppHandle, url: String) -> Result<bool> {
    let url = web_address(&url)?;
    let question = format!("Open this address in your browser?\n\n{url}");
    let handle = app.clone();
    let confirmed = dialog(move || {
        handle
            .dialog()
            .message(question)
            .title("Open link")
            .buttons(MessageDialogButtons::OkCancelCustom(
                "Open".into(),
                "Cancel".into(),
            ))
            .blocking_show()
    })
    .await?;
    if !confirmed {
        return Ok(false);
    }
    open::that_detached(url.as_str()).map_err(|e| {
        let message = format!("Could not open {url}: {e}");
        app.dialog()
            .message(message.clone())
            .title("Open link")
            .kind(MessageDialogKind::Error)
            .show(|_| {});
        CoreError::new("open_link", message)
    })?;
    Ok(true)
}

/// `text` as a web address Lumen will open: `http` or `https`, with a
/// host, without a user name or password (`https://bank.com@evil.example`
/// is evil.example), at most 2048 characters.
pub fn web_address(text: &str) -> Result<url::Url> {
    let refuse = |why: &str| {
        Err(CoreError::new(
            "invalid_link",
            format!("{why}: {text:.200}"),
        ))
    };
    if text.len() > 2048 {
        return refuse("the address is too long");
    }
    let Ok(url) = url::Url::parse(text.trim()) else {
        return refuse("not a web address");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return refuse("only http and https addresses are opened");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("addresses with a user name or password are not opened");
    }
    Ok(url)
}

/// The UI has painted its first frame. With `LUMEN_BENCH=1` (`lumen bench
/// app`) the app says so on stdout, with the time since it started.
#[tauri::command]
pub fn ui_ready() {
    if std::env::var("LUMEN_BENCH").as_deref() == Ok("1") {
        let ms = crate::STARTED
            .get()
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
        println!("lumen-bench: first-paint {ms:.1} ms after main");
    }
}

#[cfg(test)]
mod tests {
    use super::web_address;

    #[test]
    fn only_plain_web_addresses_are_opened() {
        for ok in [
            "https://example.com/a_b?c=1#d",
            "http://localhost:8080/",
            " https://example.com ",
        ] {
            assert!(web_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "file:///etc/passwd",
            "data:text/html,<script>x</script>",
            "https://bank.example@evil.example/",
            "https://user:pass@example.com/",
            "ftp://example.com/",
            "example.com",
            "https://",
            "",
        ] {
            let err = web_address(bad).expect_err(bad);
            assert_eq!(err.code, "invalid_link", "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2100));
        assert!(web_address(&long).is_err());
    }
}
