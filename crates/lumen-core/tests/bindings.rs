//! The UI's TypeScript types, generated from the Rust types that cross the
//! IPC boundary (`ui/src/lib/bindings.ts`). This test fails when the file
//! is stale; `LUMEN_UPDATE_BINDINGS=1 cargo test -p lumen-core --test
//! bindings` rewrites it.

use std::path::Path;

use ts_rs::{Config, TS};

/// Appends `T`'s declaration (with its docs) to `out`.
fn declare<T: TS>(cfg: &Config, out: &mut String) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&T::decl(cfg));
    out.push_str("\n\n");
}

fn bindings() -> String {
    // Ids, sizes and timestamps are i64/u64 in Rust and plain JSON numbers
    // on the wire: well inside 2^53 (milliseconds since 1970, bytes).
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from the Rust types by crates/lumen-core/tests/bindings.rs: do not edit.\n\
         // Regenerate with `LUMEN_UPDATE_BINDINGS=1 cargo test -p lumen-core --test bindings`.\n\n",
    );
    macro_rules! declare_all {
        ($($t:ty),* $(,)?) => { $(declare::<$t>(&cfg, &mut out);)* };
    }
    declare_all!(
        // History (lumen-store)
        lumen_store::ConversationId,
        lumen_store::MessageId,
        lumen_store::AttachmentId,
        lumen_store::Role,
        lumen_store::Status,
        lumen_store::Conversation,
        lumen_store::MessageStats,
        lumen_store::Message,
        lumen_store::SearchFilters,
        lumen_store::search::HitKind,
        lumen_store::SearchHit,
        // Models and downloads (lumen-hub)
        lumen_hub::catalogue::Capability,
        lumen_hub::catalogue::Architecture,
        lumen_hub::catalogue::Format,
        lumen_hub::Variant,
        lumen_hub::CatalogueModel,
        lumen_hub::Fit,
        lumen_hub::MemoryEstimate,
        lumen_hub::DownloadEvent,
        lumen_hub::ModelKind,
        lumen_hub::InstalledModel,
        lumen_hub::token::TokenSource,
        // The app's use cases (lumen-core)
        lumen_core::CoreError,
        lumen_core::CoreEvent,
        lumen_core::DropEvent,
        lumen_core::ChatSettings,
        lumen_core::ImageInput,
        lumen_core::ImagePreview,
        lumen_core::SendRequest,
        lumen_core::RegenerateRequest,
        lumen_core::EditRequest,
        lumen_core::ReplyStarted,
        lumen_core::AttachmentView,
        lumen_core::MessageView,
        lumen_core::ConversationView,
        lumen_core::CatalogueEntry,
        lumen_core::VariantStatus,
        lumen_core::DownloadStatus,
        lumen_core::LocalModel,
        lumen_core::TokenStatus,
        lumen_core::Theme,
        lumen_core::AppSettings,
        lumen_core::SystemInfo,
    );
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[test]
fn typescript_bindings_are_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui/src/lib/bindings.ts");
    let fresh = bindings();
    if std::env::var_os("LUMEN_UPDATE_BINDINGS").is_some() {
        std::fs::write(&path, &fresh).expect("write the bindings");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale: the Rust types the UI sees changed. Run \
         `LUMEN_UPDATE_BINDINGS=1 cargo test -p lumen-core --test bindings` and commit the result.",
        path.display()
    );
}
