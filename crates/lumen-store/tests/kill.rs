//! Reliability: the process is killed (SIGKILL) at random moments while it
//! streams replies into the store, many times. After each restart the
//! database passes `PRAGMA integrity_check` (and FTS5's own check), every
//! reply the writer saw committed is there in full, and interrupted
//! replies are `cancelled`, never left `streaming`.
//!
//! The writer is this test binary itself, re-run with `LUMEN_KILL_CHILD`
//! set, so the test needs no helper program.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lumen_store::{MessageId, MessageStats, NewConversation, Role, Status, Store};
use sqlx::Row;

const CHILD: &str = "LUMEN_KILL_CHILD";

/// The writer: streams replies forever, printing `done ID LEN` after each
/// one is committed.
async fn writer(dir: &std::path::Path) {
    let store = Store::open(dir).await.expect("child open");
    let c = store
        .create_conversation(&NewConversation::titled("kill test"))
        .await
        .expect("conversation");
    for n in 0.. {
        let q = store
            .add_message(c, None, Role::User, &format!("question {n}"))
            .await
            .expect("question");
        let mut reply = store
            .begin_reply(c, Some(q), Some("m"))
            .await
            .expect("begin");
        for t in 0..40 {
            reply.push(&format!("token{t} ")).await.expect("push");
            if t % 8 == 0 {
                reply.flush().await.expect("flush");
            }
        }
        let text_len = reply.text().len();
        let id = reply.finish(MessageStats::default()).await.expect("finish");
        println!("done {} {text_len}", id.0);
    }
}

#[test]
fn killed_writers_lose_nothing_committed() {
    if let Some(dir) = std::env::var_os(CHILD) {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(writer(std::path::Path::new(&dir)));
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let exe = std::env::current_exe().expect("test binary");
    let mut committed: Vec<(MessageId, usize)> = Vec::new();
    let mut seed = 0x5eed_u64;
    for round in 0..25 {
        let mut child = Command::new(&exe)
            .args([
                "killed_writers_lose_nothing_committed",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .filter_map(|l| {
                    let mut parts = l.strip_prefix("done ")?.split(' ');
                    let id = parts.next()?.parse().ok()?;
                    let len = parts.next()?.parse().ok()?;
                    Some((MessageId(id), len))
                })
                .collect::<Vec<_>>()
        });
        // A pseudo-random moment: 20 to 400 ms in.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 380));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        committed.extend(reader.join().expect("reader"));

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let store = Store::open(dir.path()).await.expect("reopen after kill");
            let ok: String = sqlx::query("PRAGMA integrity_check")
                .fetch_one(store.pool())
                .await
                .expect("integrity")
                .get(0);
            assert_eq!(ok, "ok", "round {round}");
            for table in ["messages_fts", "messages_trigram"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} ({table}) VALUES ('integrity-check')"
                )))
                .execute(store.pool())
                .await
                .unwrap_or_else(|e| panic!("round {round}: {table}: {e}"));
            }
            for &(id, len) in &committed {
                let m = store.message(id).await.expect("committed reply is there");
                assert_eq!(m.status, Status::Complete, "round {round}: {id:?}");
                assert_eq!(m.content.len(), len, "round {round}: {id:?}");
            }
            let streaming: i64 =
                sqlx::query("SELECT count(*) FROM messages WHERE status = 'streaming'")
                    .fetch_one(store.pool())
                    .await
                    .expect("count")
                    .get(0);
            assert_eq!(streaming, 0, "round {round}");
            store.close().await;
        });
    }
    // The kills did interrupt replies mid-stream (the path under test).
    let cancelled: i64 = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let store = Store::open(dir.path()).await.expect("open");
            sqlx::query("SELECT count(*) FROM messages WHERE status = 'cancelled'")
                .fetch_one(store.pool())
                .await
                .expect("count")
                .get(0)
        });
    assert!(cancelled > 0, "no reply was ever interrupted");
    assert!(
        committed.len() >= 10,
        "the writer committed only {} replies in 25 rounds",
        committed.len()
    );
    eprintln!(
        "{} committed replies survived 25 kills; {cancelled} interrupted ones cancelled",
        committed.len()
    );
}
