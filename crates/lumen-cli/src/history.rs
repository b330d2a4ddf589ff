//! `lumen history ...` and `lumen search`: the chat history kept in
//! `LUMEN_DATA_DIR` (or the platform's data folder).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lumen_store::{ConversationId, SearchFilters, Store};

/// `lumen history`.
#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Conversations, pinned first, then most recent.
    List {
        /// Include archived conversations.
        #[arg(long)]
        all: bool,
    },
    /// One conversation's messages.
    Show {
        /// Conversation id (from `lumen history list`).
        id: i64,
    },
    /// Export one conversation, or all, to stdout or a file.
    Export {
        /// `json` (can be imported back) or `md`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Conversation id; all when omitted.
        id: Option<i64>,
    },
    /// Import a JSON export (all of it, or nothing on any error).
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Delete a conversation.
    Rm {
        /// Conversation id.
        id: i64,
    },
}

/// `lumen search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for (any text; the last word also matches as a prefix).
    query: String,
    /// Print the hits as a JSON array.
    #[arg(long)]
    json: bool,
    /// Most hits to print.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn open() -> Result<Store> {
    let dir = lumen_store::data_dir()?;
    Store::open(&dir)
        .await
        .with_context(|| format!("cannot open the history in {}", dir.display()))
}

fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Runs a `lumen history` command.
pub fn main(cmd: HistoryCommand) -> Result<()> {
    runtime()?.block_on(async move {
        let store = open().await?;
        let mut stdout = std::io::stdout().lock();
        match cmd {
            HistoryCommand::List { all } => {
                for c in store.list_conversations(all).await? {
                    let flags = match (c.pinned, c.archived) {
                        (true, _) => "📌 ",
                        (_, true) => "(archived) ",
                        _ => "",
                    };
                    writeln!(
                        stdout,
                        "{:>6}  {}  {flags}{}",
                        c.id.0,
                        date(c.updated_at),
                        if c.title.is_empty() {
                            "(untitled)"
                        } else {
                            &c.title
                        }
                    )?;
                }
            }
            HistoryCommand::Show { id } => {
                let c = store.conversation(ConversationId(id)).await?;
                writeln!(stdout, "# {}\n", c.title)?;
                for m in store.messages(c.id).await? {
                    let note = match m.status {
                        lumen_store::Status::Cancelled => " (stopped)",
                        lumen_store::Status::Error => " (failed)",
                        lumen_store::Status::Streaming => " (being written)",
                        lumen_store::Status::Complete => "",
                    };
                    writeln!(stdout, "[{}] {}{note}:", m.id.0, m.role.as_str())?;
                    for a in store.attachments(m.id).await? {
                        writeln!(stdout, "  [image {}, {} bytes]", a.mime, a.bytes)?;
                    }
                    writeln!(stdout, "{}\n", m.content)?;
                }
            }
            HistoryCommand::Export { format, out, id } => {
                let ids = id.map(|i| vec![ConversationId(i)]);
                let export = store.export(ids.as_deref()).await?;
                let text = match format.as_str() {
                    "json" => serde_json::to_string_pretty(&export)? + "\n",
                    "md" | "markdown" => lumen_store::markdown::to_markdown(&export),
                    other => bail!("unknown export format `{other}` (expected json or md)"),
                };
                match out {
                    Some(path) => std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                    None => stdout.write_all(text.as_bytes())?,
                }
            }
            HistoryCommand::Import { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let ids = store
                    .import_json(&text)
                    .await
                    .with_context(|| format!("cannot import {}", file.display()))?;
                eprintln!("lumen: imported {} conversations", ids.len());
            }
            HistoryCommand::Rm { id } => store.delete_conversation(ConversationId(id)).await?,
        }
        store.close().await;
        Ok(())
    })
}

/// Runs `lumen search`.
pub fn search(args: SearchArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let store = open().await?;
        let mut hits = Vec::new();
        for page in 0.. {
            let batch = store
                .search(&args.query, &SearchFilters::default(), page)
                .await?;
            let last = batch.len() < lumen_store::search::PAGE_SIZE;
            hits.extend(batch);
            if last || hits.len() >= args.limit {
                break;
            }
        }
        hits.truncate(args.limit);
        let mut stdout = std::io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string(&hits)?)?;
        } else {
            for h in &hits {
                // Matches in [brackets].
                let mut shown = String::new();
                let mut at = 0;
                for &(s, e) in &h.highlights {
                    if s < at || e > h.snippet.len() {
                        continue;
                    }
                    shown.push_str(&h.snippet[at..s]);
                    shown.push('[');
                    shown.push_str(&h.snippet[s..e]);
                    shown.push(']');
                    at = e;
                }
                shown.push_str(&h.snippet[at..]);
                let place = match h.message_id {
                    Some(m) => format!("{}/{}", h.conversation_id.0, m.0),
                    None => format!("{}", h.conversation_id.0),
                };
                writeln!(
                    stdout,
                    "{place:>10}  {}  {}: {}",
                    date(h.at),
                    h.title,
                    shown.replace('\n', " ")
                )?;
            }
        }
        store.close().await;
        Ok(())
    })
}
