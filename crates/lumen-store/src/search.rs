//! Full-text search over everything the user ever asked or was answered:
//! message text, conversation titles and attachment text.
//!
//! Whatever the user types is a search, never a syntax error: the input is
//! split into words (letters and digits; everything else separates words)
//! and each word is quoted for FTS5, so `AND`, `NOT`, `*`, `-`, `:`,
//! quotes and parentheses are just text. All words must match (in any
//! order); the last one also matches as a prefix while it is being typed
//! (`invo` finds "invoice"). Matching ignores case and diacritics.
//! Results are ranked by bm25, with title matches counted double, among
//! the newest [`RANK_WINDOW`] matches of each kind.
//!
//! Text in scripts written without spaces (Chinese, Japanese, Thai ...)
//! has no word boundaries to match on: a query containing such characters
//! is a substring search instead (each word of the query must occur
//! somewhere), through a trigram index for words of three or more
//! characters, newest results first.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{ConversationId, MessageId, Result, Role, Store};

/// Results per page.
pub const PAGE_SIZE: usize = 20;

/// Matches ranked per source: the newest this many messages (and titles)
/// that match are ranked by bm25. A word found in most of a large history
/// ("the") would otherwise cost a score for every message; any query more
/// specific than that is ranked over all its matches.
pub const RANK_WINDOW: usize = 500;

/// Narrows a search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SearchFilters {
    /// Only this conversation.
    pub conversation: Option<ConversationId>,
    /// Only messages by this role (excludes title matches).
    pub role: Option<Role>,
    /// Only messages written by, or conversations held with, this model.
    pub model: Option<String>,
    /// Created at or after (Unix milliseconds).
    pub since: Option<i64>,
    /// Created before (Unix milliseconds).
    pub until: Option<i64>,
    /// Only messages with (true) or without (false) an image.
    pub has_image: Option<bool>,
}

/// Where a match was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum HitKind {
    /// A message's text.
    Message,
    /// A conversation's title.
    Title,
    /// An attachment's text (description or OCR).
    Attachment,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SearchHit {
    /// What matched.
    pub kind: HitKind,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The message (none for a title match).
    pub message_id: Option<MessageId>,
    /// The conversation's title.
    pub title: String,
    /// The matching passage.
    pub snippet: String,
    /// Byte ranges of the matched words in `snippet`.
    pub highlights: Vec<(usize, usize)>,
    /// bm25 rank (lower is better).
    pub score: f64,
    /// When the message (or conversation) was created / last changed,
    /// Unix milliseconds.
    pub at: i64,
}

/// The FTS5 query for what the user typed, or `None` when it holds no
/// word at all.
pub fn fts_query(input: &str) -> Option<String> {
    let words: Vec<&str> = words(input).map(|(_, w)| w).collect();
    let last = words.len().checked_sub(1)?;
    // Still typing the last word unless the input ends in a separator.
    let typing = input.chars().last().is_some_and(char::is_alphanumeric);
    Some(
        words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == last && typing {
                    format!("\"{w}\"*")
                } else {
                    format!("\"{w}\"")
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Characters of context a snippet shows (about two lines).
const SNIPPET_CHARS: usize = 160;

/// The query's words folded as the index folds them, the last one possibly
/// a prefix.
struct QueryTerms {
    words: Vec<String>,
    last_is_prefix: bool,
}

impl QueryTerms {
    fn new(query: &str) -> Self {
        Self {
            words: words(query).map(|(_, w)| fold(w)).collect(),
            last_is_prefix: query.chars().last().is_some_and(char::is_alphanumeric),
        }
    }

    fn matches(&self, folded: &str) -> bool {
        let last = self.words.len().saturating_sub(1);
        self.words.iter().enumerate().any(|(i, w)| {
            folded == w || (i == last && self.last_is_prefix && folded.starts_with(w.as_str()))
        })
    }
}

/// Words (runs of letters and digits) with their byte offsets, as FTS5's
/// unicode61 tokenizer splits text.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

/// Lowercase without diacritics ("Café" → "cafe"), as the index matches.
fn fold(word: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    word.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// A passage of at most about `max_chars` characters around the first
/// matching word, with the byte ranges of every matching word in it.
fn word_snippet(text: &str, terms: &QueryTerms, max_chars: usize) -> (String, Vec<(usize, usize)>) {
    let hits: Vec<(usize, usize)> = words(text)
        .filter(|(_, w)| terms.matches(&fold(w)))
        .map(|(at, w)| (at, at + w.len()))
        .collect();
    let first = hits.first().map_or(0, |h| h.0);
    // A little context before the first match, the rest after it.
    let start = text[..first]
        .char_indices()
        .rev()
        .nth((max_chars / 4).saturating_sub(1))
        .map_or(0, |(i, _)| i);
    let end = text[start..]
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| start + i);
    let mut snippet = String::new();
    if start > 0 {
        snippet.push('…');
    }
    let base = snippet.len();
    snippet.push_str(&text[start..end]);
    if end < text.len() {
        snippet.push('…');
    }
    let ranges = hits
        .into_iter()
        .filter(|&(s, e)| s >= start && e <= end)
        .map(|(s, e)| (base + s - start, base + e - start))
        .collect();
    (snippet, ranges)
}

// Ranks, then snippets are cut in Rust from the page's texts: FTS5's
// snippet() re-reads a term's whole posting list for each row it is asked
// about (7-20 ms per hit for a common word on 20,000 messages).
const SEARCH_SQL: &str = "
SELECT kind, cid, mid, body, title, score, at FROM (
    SELECT 'message' AS kind, m.conversation_id AS cid, m.id AS mid, m.content AS body,
           c.title AS title, w.score AS score, m.created_at AS at
    FROM (
        SELECT messages_fts.rowid AS id, bm25(messages_fts) AS score
        FROM messages_fts
        JOIN messages m ON m.id = messages_fts.rowid
        JOIN conversations c ON c.id = m.conversation_id
        WHERE messages_fts MATCH ?1
          AND (?2 IS NULL OR m.conversation_id = ?2)
          AND (?3 IS NULL OR m.role = ?3)
          AND (?4 IS NULL OR m.model = ?4 OR c.model = ?4)
          AND (?5 IS NULL OR m.created_at >= ?5)
          AND (?6 IS NULL OR m.created_at < ?6)
          AND (?7 IS NULL OR ?7 = EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = m.id))
        ORDER BY messages_fts.rowid DESC
        LIMIT ?10
    ) w
    JOIN messages m ON m.id = w.id
    JOIN conversations c ON c.id = m.conversation_id
    UNION ALL
    SELECT 'title', c.id, NULL, c.title, c.title, 2.0 * w.score, c.updated_at
    FROM (
        SELECT conversations_fts.rowid AS id, bm25(conversations_fts) AS score
        FROM conversations_fts
        JOIN conversations c ON c.id = conversations_fts.rowid
        WHERE conversations_fts MATCH ?1
          AND ?3 IS NULL
          AND (?2 IS NULL OR c.id = ?2)
          AND (?4 IS NULL OR c.model = ?4)
          AND (?5 IS NULL OR c.updated_at >= ?5)
          AND (?6 IS NULL OR c.updated_at < ?6)
          AND (?7 IS NULL OR ?7 = EXISTS (
                SELECT 1 FROM attachments a JOIN messages m2 ON m2.id = a.message_id
                WHERE m2.conversation_id = c.id))
        ORDER BY conversations_fts.rowid DESC
        LIMIT ?10
    ) w
    JOIN conversations c ON c.id = w.id
    UNION ALL
    SELECT 'attachment', m.conversation_id, m.id, a.text, c.title, bm25(attachments_fts), a.created_at
    FROM attachments_fts
    JOIN attachments a ON a.id = attachments_fts.rowid
    JOIN messages m ON m.id = a.message_id
    JOIN conversations c ON c.id = m.conversation_id
    WHERE attachments_fts MATCH ?1
      AND (?2 IS NULL OR m.conversation_id = ?2)
      AND (?3 IS NULL OR m.role = ?3)
      AND (?4 IS NULL OR m.model = ?4 OR c.model = ?4)
      AND (?5 IS NULL OR a.created_at >= ?5)
      AND (?6 IS NULL OR a.created_at < ?6)
      AND (?7 IS NULL OR ?7 = 1)
)
ORDER BY score, at DESC
LIMIT ?8 OFFSET ?9";

impl Store {
    /// Ranked matches for `query` (see the module docs), [`PAGE_SIZE`] per
    /// `page` (from 0). Input without any word gives no results.
    pub async fn search(
        &self,
        query: &str,
        filters: &SearchFilters,
        page: usize,
    ) -> Result<Vec<SearchHit>> {
        let Some(fts) = fts_query(query) else {
            return Ok(Vec::new());
        };
        if query.chars().any(unspaced_script) {
            return self.search_substrings(query, filters, page).await;
        }
        let offset = i64::try_from(page.saturating_mul(PAGE_SIZE)).unwrap_or(i64::MAX);
        let rows = sqlx::query(SEARCH_SQL)
            .bind(&fts)
            .bind(filters.conversation.map(|c| c.0))
            .bind(filters.role.map(Role::as_str))
            .bind(filters.model.as_deref())
            .bind(filters.since)
            .bind(filters.until)
            .bind(filters.has_image)
            .bind(PAGE_SIZE as i64)
            .bind(offset)
            .bind(RANK_WINDOW as i64)
            .fetch_all(self.pool())
            .await?;
        let terms = QueryTerms::new(query);
        rows.iter()
            .map(|row| {
                let score = row.try_get("score")?;
                SearchHit::from_row(row, score, |kind, body| match kind {
                    HitKind::Title => word_snippet(body, &terms, usize::MAX),
                    _ => word_snippet(body, &terms, SNIPPET_CHARS),
                })
            })
            .collect()
    }
}

impl SearchHit {
    /// A hit from a row of the search queries (`kind`, `cid`, `mid`,
    /// `body`, `title`, `at`), with its snippet and highlights cut from
    /// `body` by `snippet`.
    fn from_row(
        row: &sqlx::sqlite::SqliteRow,
        score: f64,
        snippet: impl FnOnce(HitKind, &str) -> (String, Vec<(usize, usize)>),
    ) -> Result<Self> {
        let kind = match row.try_get::<&str, _>("kind")? {
            "title" => HitKind::Title,
            "attachment" => HitKind::Attachment,
            _ => HitKind::Message,
        };
        let (snippet, highlights) = snippet(kind, row.try_get("body")?);
        Ok(Self {
            kind,
            conversation_id: ConversationId(row.try_get("cid")?),
            message_id: row.try_get::<Option<i64>, _>("mid")?.map(MessageId),
            title: row.try_get("title")?,
            snippet,
            highlights,
            score,
            at: row.try_get("at")?,
        })
    }
}

/// Characters of scripts written without spaces between words.
fn unspaced_script(c: char) -> bool {
    matches!(c,
        '\u{2E80}'..='\u{9FFF}'   // CJK radicals, kana, CJK unified ideographs
        | '\u{AC00}'..='\u{D7AF}' // Hangul syllables
        | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
        | '\u{FF66}'..='\u{FF9F}' // half-width katakana
        | '\u{0E00}'..='\u{0E7F}' // Thai
        | '\u{0E80}'..='\u{0EFF}' // Lao
        | '\u{1000}'..='\u{109F}' // Myanmar
        | '\u{1780}'..='\u{17FF}' // Khmer
        | '\u{20000}'..='\u{3FFFF}' // CJK extensions
    )
}

/// `%word%` for LIKE, with `\` escaping LIKE's wildcards.
fn like_pattern(word: &str) -> String {
    let mut p = String::from("%");
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A passage of `text` around the first of `words` found, with every
/// occurrence of each word highlighted (case-insensitive for ASCII).
fn substring_snippet(text: &str, words: &[&str]) -> (String, Vec<(usize, usize)>) {
    const CONTEXT: usize = 40; // characters either side
    let lower = text.to_lowercase();
    // Byte offsets only carry over when lowercasing kept every length.
    let folded = if lower.len() == text.len() {
        &lower
    } else {
        text
    };
    let first = words
        .iter()
        .filter_map(|w| folded.find(&w.to_lowercase()))
        .min()
        .unwrap_or(0);
    let start = text[..first]
        .char_indices()
        .rev()
        .nth(CONTEXT - 1)
        .map_or(0, |(i, _)| i);
    let end = text[first..]
        .char_indices()
        .nth(CONTEXT * 2)
        .map_or(text.len(), |(i, _)| first + i);
    let mut snippet = String::new();
    if start > 0 {
        snippet.push('…');
    }
    let base = snippet.len();
    snippet.push_str(&text[start..end]);
    let window = &folded[start..end];
    let mut ranges = Vec::new();
    for w in words {
        let w = w.to_lowercase();
        let mut from = 0;
        while let Some(i) = window[from..].find(&w) {
            ranges.push((base + from + i, base + from + i + w.len()));
            from += i + w.len();
        }
    }
    ranges.sort_unstable();
    if end < text.len() {
        snippet.push('…');
    }
    (snippet, ranges)
}

impl Store {
    /// The substring search of the module docs.
    async fn search_substrings(
        &self,
        query: &str,
        filters: &SearchFilters,
        page: usize,
    ) -> Result<Vec<SearchHit>> {
        let words: Vec<&str> = words(query).map(|(_, w)| w).collect();
        let long: Vec<String> = words
            .iter()
            .filter(|w| w.chars().count() >= 3)
            .map(|w| format!("\"{w}\""))
            .collect();
        // Filters are ?1-?6; the words follow. Only placeholders are
        // generated; every value is bound.
        let mut sql = String::from(
            "SELECT 'message' AS kind, m.conversation_id AS cid, m.id AS mid, c.title AS title,
                    m.content AS body, m.created_at AS at
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.status <> 'streaming'
               AND (?1 IS NULL OR m.conversation_id = ?1)
               AND (?2 IS NULL OR m.role = ?2)
               AND (?3 IS NULL OR m.model = ?3 OR c.model = ?3)
               AND (?4 IS NULL OR m.created_at >= ?4)
               AND (?5 IS NULL OR m.created_at < ?5)
               AND (?6 IS NULL OR ?6 = EXISTS (SELECT 1 FROM attachments a WHERE a.message_id = m.id))",
        );
        if !long.is_empty() {
            sql.push_str(
                " AND m.id IN (SELECT rowid FROM messages_trigram WHERE messages_trigram MATCH ?7)",
            );
        }
        let first_like = 8;
        for i in 0..words.len() {
            sql.push_str(&format!(
                " AND m.content LIKE ?{} ESCAPE '\\'",
                first_like + i
            ));
        }
        sql.push_str(
            " UNION ALL
             SELECT 'title', c.id, NULL, c.title, c.title, c.updated_at
             FROM conversations c
             WHERE ?2 IS NULL
               AND (?1 IS NULL OR c.id = ?1)
               AND (?3 IS NULL OR c.model = ?3)
               AND (?4 IS NULL OR c.updated_at >= ?4)
               AND (?5 IS NULL OR c.updated_at < ?5)
               AND (?6 IS NULL OR ?6 = EXISTS (
                     SELECT 1 FROM attachments a JOIN messages m2 ON m2.id = a.message_id
                     WHERE m2.conversation_id = c.id))",
        );
        for i in 0..words.len() {
            sql.push_str(&format!(
                " AND c.title LIKE ?{} ESCAPE '\\'",
                first_like + i
            ));
        }
        let limit = first_like + words.len();
        sql.push_str(&format!(
            " ORDER BY at DESC LIMIT ?{limit} OFFSET ?{}",
            limit + 1
        ));
        let offset = i64::try_from(page.saturating_mul(PAGE_SIZE)).unwrap_or(i64::MAX);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filters.conversation.map(|c| c.0))
            .bind(filters.role.map(Role::as_str))
            .bind(filters.model.as_deref())
            .bind(filters.since)
            .bind(filters.until)
            .bind(filters.has_image)
            .bind(long.join(" "));
        for w in &words {
            q = q.bind(like_pattern(w));
        }
        let rows = q
            .bind(PAGE_SIZE as i64)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        // Unranked: newest first.
        rows.iter()
            .map(|row| SearchHit::from_row(row, 0.0, |_, body| substring_snippet(body, &words)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_becomes_quoted_words() {
        assert_eq!(fts_query(""), None);
        assert_eq!(fts_query("  \"()*:- "), None);
        assert_eq!(fts_query("invo").as_deref(), Some("\"invo\"*"));
        assert_eq!(fts_query("invoice ").as_deref(), Some("\"invoice\""));
        assert_eq!(
            fts_query("NOT a AND \"b").as_deref(),
            Some("\"NOT\" \"a\" \"AND\" \"b\"*")
        );
        assert_eq!(
            fts_query("col:x -y (z").as_deref(),
            Some("\"col\" \"x\" \"y\" \"z\"*")
        );
        assert_eq!(fts_query("café").as_deref(), Some("\"café\"*"));
    }

    #[test]
    fn substring_snippets_highlight_every_occurrence() {
        let text = "我们明天在北京见面，北京很冷。";
        let (snippet, ranges) = substring_snippet(text, &["北京"]);
        assert_eq!(snippet, text);
        assert_eq!(ranges.len(), 2);
        for (s, e) in ranges {
            assert_eq!(&snippet[s..e], "北京");
        }
        assert_eq!(like_pattern("50%_a\\"), "%50\\%\\_a\\\\%");
        assert!(unspaced_script('北') && unspaced_script('カ') && !unspaced_script('é'));
    }

    #[test]
    fn snippets_highlight_folded_words_and_the_typed_prefix() {
        let terms = QueryTerms::new("cafe croi");
        let text = "Which CAFÉ serves the best croissant? The café near the river.";
        let (snippet, ranges) = word_snippet(text, &terms, 160);
        assert_eq!(snippet, text);
        let marked: Vec<&str> = ranges.iter().map(|&(s, e)| &snippet[s..e]).collect();
        assert_eq!(marked, ["CAFÉ", "croissant", "café"]);
        // A long text is cut around the first match.
        let long = format!("{} needle {}", "hay ".repeat(200), "hay ".repeat(200));
        let (snippet, ranges) = word_snippet(&long, &QueryTerms::new("needle "), 160);
        assert!(
            snippet.starts_with('…') && snippet.ends_with('…'),
            "{snippet}"
        );
        assert!(snippet.chars().count() <= 162);
        assert_eq!(ranges.len(), 1);
        assert_eq!(&snippet[ranges[0].0..ranges[0].1], "needle");
    }
}
