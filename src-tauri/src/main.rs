//! Lumen's desktop app: a thin Tauri 2 shell. The use cases live in
//! `lumen-core`; this crate registers its commands, forwards its events to
//! the window (`core://event`), and turns files dropped on the window into
//! paths for the UI (`lumen://drop`), which the core reads and checks.
//! Rust reads only files the user dropped or picked in a dialog.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod commands;

use std::sync::Arc;

use lumen_core::{Core, CoreConfig, DropEvent};
use tauri::{DragDropEvent, Emitter, Manager, WindowEvent};
use tokio::sync::broadcast::error::RecvError;

use commands::Granted;

/// Large buffers are recycled instead of returned to the system after every
/// operation (see [`lumen_core::alloc`]).
#[global_allocator]
static ALLOC: lumen_core::alloc::Recycler = lumen_core::alloc::Recycler;

/// When `main` began (for `lumen bench app`).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    #[cfg(target_os = "linux")]
    lean_webview();
    set_threads();
    lumen_core::init_logging();
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .manage(Granted::default())
        .setup(|app| {
            let config = CoreConfig::from_env()?;
            let core = tauri::async_runtime::block_on(Core::open(config))?;
            app.manage(core.clone());
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(forward_events(core, handle));
            Ok(())
        })
        .on_window_event(|window, event| {
            let WindowEvent::DragDrop(drag) = event else {
                return;
            };
            match drag {
                DragDropEvent::Enter { paths, .. } => {
                    let _ = window.emit(
                        "lumen://drop",
                        DropEvent::Enter {
                            paths: paths.clone(),
                        },
                    );
                }
                DragDropEvent::Leave => {
                    let _ = window.emit("lumen://drop", DropEvent::Leave);
                }
                DragDropEvent::Drop { paths, .. } => {
                    let app = window.app_handle();
                    commands::dropped(app, &app.state::<Granted>(), paths);
                }
                _ => {}
            }
        })
        .invoke_handler(tauri::generate_handler![
            commands::send_message,
            commands::regenerate,
            commands::edit_message,
            commands::stop_reply,
            commands::preview_image,
            commands::pick_images,
            commands::list_conversations,
            commands::open_conversation,
            commands::rename_conversation,
            commands::set_pinned,
            commands::set_conversation_settings,
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
            commands::pick_model_file,
            commands::import_model,
            commands::token_status,
            commands::set_token,
            commands::clear_token,
            commands::app_settings,
            commands::save_app_settings,
            commands::system_info,
            commands::e2e_drop,
            commands::open_link,
            commands::ui_ready,
        ])
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("lumen: error: {e}");
        std::process::exit(1);
    }
}

/// WebKitGTK settings for a lean, software-drawn chat window, made before
/// GTK and WebKit start; each one is left alone when the user has set the
/// variable. Measured with `lumen bench app` (see bench/README.md):
///
/// - `WEBKIT_DISABLE_COMPOSITING_MODE`: accelerated compositing kept large
///   layer buffers (about 55 MB in the web process, rendering in software
///   under Xvfb) and made frames uneven while a reply streamed.
/// - `GDK_GL=disable`, `WEBKIT_DISABLE_DMABUF_RENDERER` and
///   `WEBKIT_WEB_RENDER_DEVICE_FILE`: without compositing this process never
///   draws with OpenGL, yet GDK (probing GLX visuals when it opens the
///   display) and WebKit (probing the DMA-BUF renderer and looking up the
///   GPU's render node through EGL) each initialised the GL driver, which
///   with Mesa maps its LLVM (about 20 MiB). With the three set, this
///   process loads no GL driver: 21 MiB less in all. WebKit's web process
///   still starts EGL (it cannot run without it).
/// - `JSC_useJIT=0` (read by the web process, which inherits the
///   environment): JavaScriptCore interprets the UI's script instead of
///   compiling it. The page renders model output, which is untrusted, so a
///   web process without a JIT (no writable executable memory) is also the
///   harder target; it saves about 8 MiB (the JIT compilers' code and
///   their output), and frames while a reply streams were unchanged
///   (median 16 ms, p95 18 vs 17 ms, no frame over 50 ms).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lean_webview() {
    let render_node = first_render_node();
    let vars = [
        ("WEBKIT_DISABLE_COMPOSITING_MODE", "1"),
        ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
        ("GDK_GL", "disable"),
        ("JSC_useJIT", "0"),
        // WebKit takes this path as the GPU instead of asking EGL; with no
        // render node (a virtual display, no GPU) it names one that does
        // not exist, which WebKit treats as no device.
        ("WEBKIT_WEB_RENDER_DEVICE_FILE", render_node.as_str()),
    ];
    for (var, value) in vars {
        if std::env::var_os(var).is_none() {
            // SAFETY: called first thing in `main`, before any other thread
            // exists that could read the environment.
            unsafe { std::env::set_var(var, value) };
        }
    }
}

/// The first DRM render node (`/dev/dri/renderD128` on most machines with a
/// GPU), or that conventional path when there is none.
#[cfg(target_os = "linux")]
fn first_render_node() -> String {
    let mut nodes: Vec<String> = std::fs::read_dir("/dev/dri")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("renderD"))
        .collect();
    nodes.sort();
    match nodes.first() {
        Some(name) => format!("/dev/dri/{name}"),
        None => "/dev/dri/renderD128".into(),
    }
}

/// One compute thread per core unless `RAYON_NUM_THREADS` says otherwise
/// (see [`lumen_core::set_compute_threads`]).
#[allow(unsafe_code)]
fn set_threads() {
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe { lumen_core::set_compute_threads(None) };
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
