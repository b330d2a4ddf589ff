//! Lumen's desktop app: a thin Tauri 2 shell. The use cases live in
//! `lumen-core`; this crate registers its commands, forwards its events to
//! the window (`core://event`), and turns files dropped on the window into
//! paths for the UI (`lumen://drop`), which the core reads and checks.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod commands;

use std::sync::Arc;

use lumen_core::{Core, CoreConfig};
use tauri::{DragDropEvent, Emitter, Manager, WindowEvent};
use tokio::sync::broadcast::error::RecvError;

/// What a drag over the window is doing, for the drop overlay.
#[derive(Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum DropEvent {
    /// Files are over the window.
    Enter {
        /// Their paths.
        paths: Vec<std::path::PathBuf>,
    },
    /// They left without being dropped.
    Leave,
    /// They were dropped.
    Drop {
        /// Their paths.
        paths: Vec<std::path::PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LUMEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tauri::Builder::default()
        .setup(|app| {
            let config = CoreConfig::from_env()?;
            let core = tauri::async_runtime::block_on(Core::open(config))?;
            app.manage(core.clone());
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(forward_events(core, handle));
            Ok(())
        })
        .on_window_event(|window, event| {
            let forward = match event {
                WindowEvent::DragDrop(DragDropEvent::Enter { paths, .. }) => DropEvent::Enter {
                    paths: paths.clone(),
                },
                WindowEvent::DragDrop(DragDropEvent::Drop { paths, .. }) => DropEvent::Drop {
                    paths: paths.clone(),
                },
                WindowEvent::DragDrop(DragDropEvent::Leave) => DropEvent::Leave,
                _ => return,
            };
            let _ = window.emit("lumen://drop", forward);
        })
        .invoke_handler(tauri::generate_handler![
            commands::send_message,
            commands::stop_reply,
            commands::list_conversations,
            commands::get_messages,
            commands::rename_conversation,
            commands::delete_conversation,
            commands::search_history,
            commands::catalogue,
            commands::installed_models,
            commands::start_download,
            commands::pause_download,
            commands::resume_download,
            commands::cancel_download,
            commands::downloads,
            commands::delete_model,
            commands::import_model,
        ])
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("lumen: error: {e}");
        std::process::exit(1);
    }
}

/// Sends every core event to the window.
async fn forward_events(core: Arc<Core>, app: tauri::AppHandle) {
    let mut rx = core.subscribe();
    loop {
        match rx.recv().await {
            Ok(event) => {
                let _ = app.emit("core://event", &event);
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(skipped = n, "the UI fell behind"),
            Err(RecvError::Closed) => break,
        }
    }
}
