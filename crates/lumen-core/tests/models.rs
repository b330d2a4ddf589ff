//! Models through the core: the catalogue, downloads from a loopback Hub
//! (lumen-testhub) reported as events, pause/resume/cancel, delete.

use std::sync::Arc;
use std::time::Duration;

use lumen_core::{Core, CoreEvent};
use lumen_hub::{DownloadEvent, Fit};
use lumen_testhub::{HubFile, HubRepo, TestHub};
use tokio::sync::broadcast;

mod common;

async fn open(dir: &tempfile::TempDir, hub: &TestHub) -> Arc<Core> {
    common::open_core(dir.path(), &hub.url()).await
}

/// Download events of `id` until it ends; the last one.
async fn until_end(rx: &mut broadcast::Receiver<CoreEvent>, id: u64) -> Vec<DownloadEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("in time")
            .expect("event");
        if let CoreEvent::Download { id: i, event } = ev
            && i == id
        {
            let end = matches!(
                event,
                DownloadEvent::Finished { .. }
                    | DownloadEvent::Failed { .. }
                    | DownloadEvent::Cancelled
            );
            seen.push(event);
            if end {
                return seen;
            }
        }
    }
}

fn gguf(len: usize) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend((0..len).map(|i| (i * 31 % 251) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_says_what_fits_and_what_is_installed() {
    let hub = TestHub::start().expect("server");
    hub.add_repo(HubRepo::new(
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        vec![HubFile::bytes(
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            gguf(100_000),
        )],
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(&dir, &hub).await;
    let catalogue = core.catalogue().expect("catalogue");
    assert_eq!(catalogue.len(), 5);
    let seventy = catalogue
        .iter()
        .find(|e| e.model.id == "llama-3.3-70b-instruct")
        .expect("70b");
    // This machine has 24 GB: the 70B does not fit.
    assert_eq!(seventy.variants[0].fit, Fit::TooLarge);
    assert!(
        catalogue
            .iter()
            .all(|e| e.variants.iter().all(|v| !v.installed))
    );

    let mut rx = core.subscribe();
    let id = core
        .start_download("llama-3.2-1b-instruct:q4_k_m")
        .await
        .expect("start");
    let events = until_end(&mut rx, id).await;
    assert!(
        matches!(events.first(), Some(DownloadEvent::Started { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(DownloadEvent::Finished { .. })),
        "{events:?}"
    );
    let one_b = core
        .catalogue()
        .expect("catalogue")
        .into_iter()
        .find(|e| e.model.id == "llama-3.2-1b-instruct")
        .expect("1b");
    let q4 = one_b
        .variants
        .iter()
        .find(|v| v.variant.id == "q4_k_m")
        .expect("q4");
    assert!(q4.installed);
    assert!(
        one_b.variants.iter().filter(|v| v.installed).count() == 1,
        "only that variant"
    );
    let status = core.downloads();
    assert_eq!(status.len(), 1);
    assert!(!status[0].active);

    let freed = core
        .delete_model("bartowski/Llama-3.2-1B-Instruct-GGUF")
        .expect("delete");
    assert_eq!(freed, 100_004);
    assert!(core.installed_models().is_empty());
    core.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_pause_resume_and_cancel_by_id() {
    let hub = TestHub::start().expect("server");
    hub.add_repo(HubRepo::new(
        "owner/slow",
        vec![HubFile::bytes("model.gguf", gguf(2_000_000))],
    ));
    hub.set_rate_limit(Some(2_000_000));
    let dir = tempfile::tempdir().expect("tmp");
    let core = open(&dir, &hub).await;
    let mut rx = core.subscribe();
    let id = core.start_download("owner/slow").await.expect("start");
    // Deleting a model while it downloads is refused.
    let e = core.delete_model("owner/slow").expect_err("busy");
    assert_eq!(e.code, "busy");
    // Also when the download was asked for by its catalogue name.
    hub.add_repo(HubRepo::new(
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        vec![HubFile::bytes(
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            gguf(2_000_000),
        )],
    ));
    let by_name = core
        .start_download("llama-3.2-1b-instruct:q4_k_m")
        .await
        .expect("start by name");
    let e = core
        .delete_model("bartowski/Llama-3.2-1B-Instruct-GGUF:Llama-3.2-1B-Instruct-Q4_K_M.gguf")
        .expect_err("busy by repo");
    assert_eq!(e.code, "busy");
    core.cancel_download(by_name).expect("cancel");
    assert_eq!(
        until_end(&mut rx, by_name).await.last(),
        Some(&DownloadEvent::Cancelled)
    );
    core.pause_download(id).expect("pause");
    core.resume_download(id).expect("resume");
    let events = until_end(&mut rx, id).await;
    assert!(events.contains(&DownloadEvent::Paused), "{events:?}");
    assert!(events.contains(&DownloadEvent::Resumed), "{events:?}");
    assert!(matches!(
        events.last(),
        Some(DownloadEvent::Finished { .. })
    ));
    assert_eq!(core.pause_download(id).expect_err("over").code, "not_found");

    core.delete_model("owner/slow").expect("delete");
    let id = core.start_download("owner/slow").await.expect("again");
    core.cancel_download(id).expect("cancel");
    let events = until_end(&mut rx, id).await;
    assert_eq!(events.last(), Some(&DownloadEvent::Cancelled));
    assert!(core.installed_models().is_empty());

    // Unknown names and repositories are refused before anything starts.
    for (spec, code) in [
        ("llama-9", "unknown_model"),
        ("nobody/nothing", "repo_not_found"),
        ("../../etc", "invalid_name"),
    ] {
        let e = core.start_download(spec).await.expect_err(spec);
        assert_eq!(e.code, code, "{spec}: {e:?}");
    }
    assert_eq!(core.downloads().len(), 3);
    core.close().await;
}
