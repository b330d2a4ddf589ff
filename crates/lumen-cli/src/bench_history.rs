//! `lumen bench history`: the chat history at scale (10,000 conversations,
//! 200,000 messages of generated prose by default): open + migrate, insert
//! of one message, search and search-as-you-type latencies (p50/p95), and
//! database size per message.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use lumen_store::transfer::{Export, ExportConversation, ExportMessage, FORMAT, VERSION};
use lumen_store::{NewConversation, Role, SearchFilters, Store};
use serde_json::json;

/// `lumen bench history`.
#[derive(Debug, Args)]
pub struct HistoryBenchArgs {
    /// Conversations to create.
    #[arg(long, default_value_t = 10_000)]
    conversations: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Searches timed (each kind).
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Where to build the database (default: a temporary folder, deleted
    /// afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Words with a rough Zipf spread, so that some are everywhere and most
/// are rare, as in real chats.
const WORDS: &str = "the of and to a in is it you that he was for on are with as his they be at one \
have this from or had by hot word but what some we can out other were all there when up use your how \
said an each she which do their time if will way about many then them write would like so these her \
long make thing see him two has look more day could go come did number sound no most people my over \
know water than call first who may down side been now find any new work part take get place made live \
where after back little only round man year came show every good me give our under name very through \
just form sentence great think say help low line differ turn cause much mean before move right boy old \
too same tell does set three want air well also play small end put home read hand port large spell add \
even land here must big high such follow act why ask men change went light kind off need house picture \
try us again animal point mother world near build self earth father invoice total receipt chart revenue \
quarter growth screenshot error message stack trace function compile rust python model llama vision \
image photo caption recipe pasta dog travel flight hotel budget tax report meeting email summary draft";

/// A 64-bit xorshift generator: fixed sequences for benchmarks' data.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Index in `0..n`, skewed towards small values.
    fn zipf(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as usize % n
    }
}

fn prose(rng: &mut Rng, words: &[&str], len: usize) -> String {
    let mut s = String::with_capacity(len * 7);
    for i in 0..len {
        if i > 0 {
            s.push(if i % 13 == 0 { '.' } else { ' ' });
            if i % 13 == 0 {
                s.push(' ');
            }
        }
        s.push_str(words[rng.zipf(words.len())]);
    }
    s.push('.');
    s
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn summary(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort();
    json!({"p50_ms": percentile(&times, 0.5), "p95_ms": percentile(&times, 0.95), "n": times.len()})
}

/// Runs the benchmark.
pub fn main(args: HistoryBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("history"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args, &dir))?;
    if args.json {
        println!("{report}");
    }
    Ok(())
}

async fn run(args: &HistoryBenchArgs, dir: &std::path::Path) -> Result<serde_json::Value> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let say = |line: String| {
        if !args.json {
            eprintln!("{line}");
        }
    };

    let t = Instant::now();
    let store = Store::open(dir).await?;
    let open_new = t.elapsed();

    // Build the history in batches of whole conversations (one
    // transaction each, through the import path).
    let per = (args.messages / args.conversations.max(1)).max(1);
    let t = Instant::now();
    let mut made = 0;
    while made < args.conversations {
        let batch = (args.conversations - made).min(500);
        let conversations = (0..batch)
            .map(|_| ExportConversation {
                title: prose(&mut rng, &words, 4).trim_end_matches('.').to_string(),
                model: Some("llama-3.2-3b-instruct".into()),
                system_prompt: None,
                settings: json!({}),
                created_at: "2026-01-01T00:00:00Z".into(),
                pinned: false,
                archived: false,
                messages: (0..per)
                    .map(|i| {
                        let len = 8 + rng.zipf(120);
                        ExportMessage {
                            role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                            content: prose(&mut rng, &words, len),
                            created_at: "2026-01-01T00:00:00Z".into(),
                            parent: None,
                            status: None,
                            model: None,
                            attachments: Vec::new(),
                        }
                    })
                    .collect(),
            })
            .collect();
        store
            .import(&Export {
                format: FORMAT.into(),
                version: VERSION,
                conversations,
            })
            .await?;
        made += batch;
    }
    let total = args.conversations * per;
    say(format!(
        "built {} conversations, {total} messages in {:.1} s",
        args.conversations,
        t.elapsed().as_secs_f64()
    ));
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await?;
    store.close().await;

    let t = Instant::now();
    let store = Store::open(dir).await?;
    let open_full = t.elapsed();

    // One message at a time, as the app adds them.
    let target = store
        .create_conversation(&NewConversation::titled("bench"))
        .await?;
    let mut inserts = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let text = prose(&mut rng, &words, 30);
        let t = Instant::now();
        store.add_message(target, None, Role::User, &text).await?;
        inserts.push(t.elapsed());
    }

    // Searches of one to three words, and the same typed letter by letter.
    let mut searches = Vec::with_capacity(args.queries);
    let mut typing = Vec::new();
    let mut hits = 0usize;
    for q in 0..args.queries {
        let n = 1 + q % 3;
        let query: Vec<&str> = (0..n).map(|_| words[rng.zipf(words.len())]).collect();
        let query = query.join(" ");
        let t = Instant::now();
        hits += store
            .search(&query, &SearchFilters::default(), 0)
            .await?
            .len();
        searches.push(t.elapsed());
        if q < args.queries / 10 {
            for end in 1..=query.len() {
                if !query.is_char_boundary(end) {
                    continue;
                }
                let t = Instant::now();
                store
                    .search(&query[..end], &SearchFilters::default(), 0)
                    .await?;
                typing.push(t.elapsed());
            }
        }
    }

    let db = dir.join(lumen_store::DATABASE_FILE);
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await?;
    let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    store.close().await;

    let report = json!({
        "conversations": args.conversations,
        "messages": total,
        "open_new_ms": open_new.as_secs_f64() * 1e3,
        "open_full_ms": open_full.as_secs_f64() * 1e3,
        "insert": summary(inserts),
        "search": summary(searches),
        "search_as_you_type": summary(typing),
        "mean_hits_per_search": hits as f64 / args.queries.max(1) as f64,
        "database_bytes": bytes,
        "bytes_per_message": bytes as f64 / total.max(1) as f64,
    });
    say(format!(
        "open + migrate: new {:.1} ms, {total} messages {:.1} ms\n\
         insert one message: p50 {:.2} ms, p95 {:.2} ms\n\
         search: p50 {:.2} ms, p95 {:.2} ms ({} queries)\n\
         search as you type: p50 {:.2} ms, p95 {:.2} ms ({} keystrokes)\n\
         database: {:.1} MB, {:.0} bytes per message",
        report["open_new_ms"].as_f64().unwrap_or(0.0),
        report["open_full_ms"].as_f64().unwrap_or(0.0),
        report["insert"]["p50_ms"].as_f64().unwrap_or(0.0),
        report["insert"]["p95_ms"].as_f64().unwrap_or(0.0),
        report["search"]["p50_ms"].as_f64().unwrap_or(0.0),
        report["search"]["p95_ms"].as_f64().unwrap_or(0.0),
        report["search"]["n"],
        report["search_as_you_type"]["p50_ms"]
            .as_f64()
            .unwrap_or(0.0),
        report["search_as_you_type"]["p95_ms"]
            .as_f64()
            .unwrap_or(0.0),
        report["search_as_you_type"]["n"],
        bytes as f64 / 1e6,
        report["bytes_per_message"].as_f64().unwrap_or(0.0),
    ));
    Ok(report)
}
