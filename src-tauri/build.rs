//! Tauri's build step: reads tauri.conf.json and the capabilities, and
//! gives each of Lumen's commands a permission (`allow-<name>`), so that
//! the window may call only those its capability lists.

/// Every command in `src/main.rs`'s `generate_handler!`.
const COMMANDS: &[&str] = &[
    "send_message",
    "regenerate",
    "edit_message",
    "stop_reply",
    "preview_image",
    "pick_images",
    "list_conversations",
    "open_conversation",
    "rename_conversation",
    "set_pinned",
    "set_conversation_settings",
    "delete_conversation",
    "search_history",
    "catalogue",
    "installed_models",
    "start_download",
    "pause_download",
    "resume_download",
    "cancel_download",
    "downloads",
    "delete_model",
    "pick_model_file",
    "import_model",
    "token_status",
    "set_token",
    "clear_token",
    "app_settings",
    "save_app_settings",
    "system_info",
    "e2e_drop",
    "open_link",
    "ui_ready",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build step");
}
