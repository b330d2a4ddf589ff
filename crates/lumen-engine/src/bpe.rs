//! A byte-pair-encoding model in flat arrays, for the Hugging Face
//! `tokenizers` pipeline.
//!
//! `tokenizers`' own `BPE` keeps the vocabulary twice (text → id and id →
//! text, each text its own allocation) and the merges in a hash map. For
//! Llama 3's 128,256 tokens and 280,147 merges that is about 34 MB resident
//! (measured: 25.6 MB of tables plus 8.6 MB of small strings), 4% of a
//! 1B Q4_0 file; for SmolLM2's 49,152 tokens, 8.5 MB, a tenth of its
//! weights. [`FlatBpe`] holds the same data in 6.5 MB and 1.7 MB:
//! - every token's text in one buffer, found by id through an array of end
//!   offsets and by text through an open-addressing table of ids;
//! - the merges as rows by left token: each row lists the right tokens it
//!   merges with (sorted), the merge's rank and the merged token.
//!
//! It encodes exactly as `tokenizers`' `BPE` without dropout, unknown
//! token, byte fallback or word prefixes/suffixes (the byte-level BPE of
//! Llama 3, SmolLM and GPT-2): a word's characters are looked up (those not
//! in the vocabulary are left out), then the adjacent pair with the lowest
//! rank is merged, the leftmost among equals, until no pair merges; with
//! `ignore_merges` a word that is itself a token is that token. A heap of
//! candidate merges keeps a long word (a pasted run of letters) at
//! O(n log n). Where two merges name the same pair, the later one counts,
//! and where two tokens have the same text, its id is the later one's, as
//! in `tokenizers`. No cache: a word is merged in microseconds, and a cache
//! of the words seen would grow with every conversation.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

/// A byte-level BPE vocabulary and its merges (see the [module docs](self)).
#[derive(Clone)]
pub(crate) struct FlatBpe {
    tables: Arc<Tables>,
    ignore_merges: bool,
}

struct Tables {
    /// Every token's text, in id order.
    text: Box<str>,
    /// Where each token's text ends in `text` (it starts where the previous
    /// one ends).
    ends: Box<[u32]>,
    /// Open addressing by the hash of a text: id + 1, or 0 for an empty
    /// slot. A power of two, at least twice the number of tokens.
    slots: Box<[u32]>,
    /// `merges[rows[a]..rows[a + 1]]` are the merges whose left token is
    /// `a`, by right token.
    rows: Box<[u32]>,
    merges: Box<[Merge]>,
}

/// What [`FlatBpe::from_tokenizer_json`] reads of a `tokenizer.json`
/// (texts borrowed from the file where they hold no escapes).
#[derive(serde::Deserialize)]
struct TokenizerJson<'a> {
    #[serde(borrow)]
    model: ModelJson<'a>,
}

#[derive(serde::Deserialize)]
struct ModelJson<'a> {
    #[serde(rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    vocab: HashMap<Cow<'a, str>, u32>,
    #[serde(borrow)]
    merges: Vec<MergeJson<'a>>,
    #[serde(default)]
    ignore_merges: bool,
}

/// A merge as `["a", "b"]` or, in older files, `"a b"`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MergeJson<'a> {
    Pair(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
    Text(#[serde(borrow)] Cow<'a, str>),
}

/// One merge, in its left token's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Merge {
    right: u32,
    /// Its position in the merge list: lower merges first.
    rank: u32,
    /// The token the pair becomes.
    merged: u32,
}

/// One symbol of a word being merged.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    /// Byte offset in the word.
    start: u32,
    /// Byte length; 0 once merged into the symbol on its left.
    len: u32,
    prev: u32,
    next: u32,
}

/// No neighbour.
const NONE: u32 = u32::MAX;

impl FlatBpe {
    /// Builds the model from the token texts (in id order) and the merges
    /// (as pairs of token texts, in rank order). An error names a merge
    /// whose parts or result are not tokens.
    pub(crate) fn new<'a>(
        tokens: &[&str],
        merges: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
        ignore_merges: bool,
    ) -> Result<Self, String> {
        let too_many = || format!("{} tokens are more than this tokenizer takes", tokens.len());
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        if tokens.len() >= (u32::MAX / 2) as usize || total > u32::MAX as usize {
            return Err(too_many());
        }
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(tokens.len());
        for t in tokens {
            text.push_str(t);
            ends.push(text.len() as u32);
        }
        let mut tables = Tables {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            slots: vec![0; (2 * tokens.len()).next_power_of_two().max(2)].into_boxed_slice(),
            rows: Box::new([]),
            merges: Box::new([]),
        };
        for id in 0..tokens.len() as u32 {
            tables.index(id);
        }
        tables.set_merges(merges)?;
        Ok(Self {
            tables: Arc::new(tables),
            ignore_merges,
        })
    }

    /// The BPE model of a `tokenizer.json` (its `model.vocab`,
    /// `model.merges` and `model.ignore_merges`), or `None` when the file
    /// holds another model or ids that are not `0..n` (the caller keeps
    /// `tokenizers`' own then). The caller checks the model's other options
    /// (see the [module docs](self)).
    pub(crate) fn from_tokenizer_json(json: &str) -> Option<Self> {
        let file: TokenizerJson = serde_json::from_str(json).ok()?;
        if file.model.kind.as_deref().is_some_and(|k| k != "BPE") {
            return None;
        }
        let mut tokens: Vec<Option<&str>> = vec![None; file.model.vocab.len()];
        for (text, id) in &file.model.vocab {
            *tokens.get_mut(*id as usize)? = Some(text);
        }
        let tokens: Vec<&str> = tokens.into_iter().collect::<Option<_>>()?;
        let merges = file.model.merges.iter().map(|m| match m {
            MergeJson::Pair(a, b) => (a.as_ref(), b.as_ref()),
            // Legacy `"a b"`: `tokenizers` has checked the single space.
            MergeJson::Text(t) => t.split_once(' ').unwrap_or((t, "")),
        });
        Self::new(&tokens, merges, file.model.ignore_merges).ok()
    }

    /// Whether a word that is itself a token skips merging.
    pub(crate) fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// Bytes of memory the tables hold.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        let t = &self.tables;
        t.text.len()
            + size_of_val(&*t.ends)
            + size_of_val(&*t.slots)
            + size_of_val(&*t.rows)
            + size_of_val(&*t.merges)
    }

    /// The symbols of `word` once merged, in order.
    fn merge_word(&self, word: &str) -> Vec<Symbol> {
        let t = &*self.tables;
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let len = c.len_utf8();
            // Characters that are not tokens are left out, and their
            // neighbours become adjacent (as `tokenizers` does without an
            // unknown token).
            if let Some(id) = t.id(&word[start..start + len]) {
                let i = symbols.len() as u32;
                symbols.push(Symbol {
                    id,
                    start: start as u32,
                    len: len as u32,
                    prev: i.checked_sub(1).unwrap_or(NONE),
                    next: i + 1,
                });
            }
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        // Candidate merges: (rank, left symbol, merged token), lowest rank
        // and then leftmost first.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| {
                let m = t.merge(w[0].id, w[1].id)?;
                Some(Reverse((m.rank, i as u32, m.merged)))
            })
            .collect();
        while let Some(Reverse((_, pos, merged))) = heap.pop() {
            let left = symbols[pos as usize];
            // Stale candidates: the left symbol was merged away or changed,
            // or its right neighbour did.
            if left.len == 0 || left.next == NONE {
                continue;
            }
            let right = symbols[left.next as usize];
            if t.merge(left.id, right.id).map(|m| m.merged) != Some(merged) {
                continue;
            }
            symbols[left.next as usize].len = 0;
            let s = &mut symbols[pos as usize];
            s.id = merged;
            s.len += right.len;
            s.next = right.next;
            if right.next != NONE {
                symbols[right.next as usize].prev = pos;
                if let Some(m) = t.merge(merged, symbols[right.next as usize].id) {
                    heap.push(Reverse((m.rank, pos, m.merged)));
                }
            }
            if left.prev != NONE
                && let Some(m) = t.merge(symbols[left.prev as usize].id, merged)
            {
                heap.push(Reverse((m.rank, left.prev, m.merged)));
            }
        }
        symbols.retain(|s| s.len > 0);
        symbols
    }
}

impl Tables {
    /// The text of token `id`.
    fn text(&self, id: u32) -> Option<&str> {
        let end = *self.ends.get(id as usize)? as usize;
        let start = match id {
            0 => 0,
            _ => self.ends[id as usize - 1] as usize,
        };
        self.text.get(start..end)
    }

    /// The id of the token whose text is `s` (the last such id).
    fn id(&self, s: &str) -> Option<u32> {
        self.slots[self.slot_of(s)].checked_sub(1)
    }

    /// Puts `id` in the table; a later id with the same text replaces an
    /// earlier one.
    fn index(&mut self, id: u32) {
        let i = self.slot_of(self.text(id).unwrap_or_default());
        self.slots[i] = id + 1;
    }

    /// The slot that holds the id of text `s`, or the empty slot where it
    /// belongs (linear probing; the table always has empty slots).
    fn slot_of(&self, s: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = hash(s) & mask;
        while let Some(id) = self.slots[i].checked_sub(1) {
            if self.text(id) == Some(s) {
                break;
            }
            i = (i + 1) & mask;
        }
        i
    }

    /// The merge of `left` followed by `right`, if there is one.
    fn merge(&self, left: u32, right: u32) -> Option<Merge> {
        let a = *self.rows.get(left as usize)? as usize;
        let b = *self.rows.get(left as usize + 1)? as usize;
        let row = &self.merges[a..b];
        row.binary_search_by_key(&right, |m| m.right)
            .ok()
            .map(|i| row[i])
    }

    /// Resolves the merges' texts to ids and lays them out by left token.
    fn set_merges<'a>(
        &mut self,
        merges: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        let mut resolved: Vec<(u32, Merge)> = Vec::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, (a, b)) in merges.enumerate() {
            let id = |s: &str| {
                self.id(s)
                    .ok_or_else(|| format!("merge `{a} {b}`: `{s}` is not in the vocabulary"))
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let merge = Merge {
                right: id(b)?,
                rank: u32::try_from(rank).map_err(|_| "too many merges".to_string())?,
                merged: id(&joined)?,
            };
            resolved.push((id(a)?, merge));
        }
        // By pair, and of two merges of the same pair the later one.
        resolved.sort_unstable_by_key(|(left, m)| (*left, m.right, Reverse(m.rank)));
        resolved.dedup_by_key(|(left, m)| (*left, m.right));
        let n = self.ends.len();
        let mut rows = vec![0u32; n + 1];
        for (left, _) in &resolved {
            rows[*left as usize + 1] += 1;
        }
        for i in 0..n {
            rows[i + 1] += rows[i];
        }
        self.rows = rows.into_boxed_slice();
        self.merges = resolved.into_iter().map(|(_, m)| m).collect();
        Ok(())
    }
}

/// FNV-1a, folded: token texts are short.
fn hash(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as usize
}

impl Model for FlatBpe {
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        if sequence.is_empty() {
            return Ok(Vec::new());
        }
        let t = &*self.tables;
        if self.ignore_merges
            && let Some(id) = t.id(sequence)
        {
            return Ok(vec![Token::new(
                id,
                sequence.to_string(),
                (0, sequence.len()),
            )]);
        }
        Ok(self
            .merge_word(sequence)
            .into_iter()
            .map(|s| {
                let (start, end) = (s.start as usize, (s.start + s.len) as usize);
                let text = t.text(s.id).unwrap_or_default().to_string();
                Token::new(s.id, text, (start, end))
            })
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tables.id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.tables.text(id).map(str::to_string)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        // Later ids replace earlier ones of the same text, as in the table.
        (0..self.get_vocab_size() as u32)
            .filter_map(|id| Some((self.tables.text(id)?.to_string(), id)))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.tables.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("saving a GGUF file's tokenizer is not supported".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of single letters and a few merges.
    fn model(merges: &[(&'static str, &'static str)], ignore_merges: bool) -> FlatBpe {
        let tokens = [
            "a", "b", "c", "ab", "bc", "aa", "abc", "aaa", "aaaa", "xyz", "é", "éa",
        ];
        FlatBpe::new(&tokens, merges.iter().copied(), ignore_merges).expect("model")
    }

    fn ids(m: &FlatBpe, word: &str) -> Vec<u32> {
        m.tokenize(word)
            .expect("tokenize")
            .iter()
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn the_lowest_rank_merges_first_and_the_leftmost_among_equals() {
        // "abc": (a b) ranks before (b c), so a|b|c → ab|c → abc.
        let m = model(&[("a", "b"), ("b", "c"), ("ab", "c")], false);
        assert_eq!(ids(&m, "abc"), [6]);
        // With (b c) first: a|bc, and no merge of (a bc).
        let m = model(&[("b", "c"), ("a", "b"), ("ab", "c")], false);
        assert_eq!(ids(&m, "abc"), [0, 4]);
        // "aaa" with (a a): the left pair merges first: aa|a.
        let m = model(&[("a", "a")], false);
        assert_eq!(ids(&m, "aaa"), [5, 0]);
        // "aaaa": aa|aa, then (aa aa) → aaaa.
        let m = model(&[("a", "a"), ("aa", "aa")], false);
        assert_eq!(ids(&m, "aaaa"), [8]);
    }

    #[test]
    fn offsets_cover_the_merged_bytes() {
        let m = model(&[("é", "a")], false);
        let tokens = m.tokenize("béa").expect("tokenize");
        let got: Vec<_> = tokens.iter().map(|t| (t.id, t.offsets)).collect();
        assert_eq!(got, [(1, (0, 1)), (11, (1, 4))]);
        assert_eq!(tokens[1].value, "éa");
    }

    #[test]
    fn whole_words_skip_merging_only_with_ignore_merges() {
        // No merge makes "xyz", and its letters are not tokens.
        assert_eq!(ids(&model(&[], true), "xyz"), [9]);
        assert_eq!(ids(&model(&[], false), "xyz"), Vec::<u32>::new());
    }

    #[test]
    fn characters_outside_the_vocabulary_are_left_out() {
        let m = model(&[("a", "b")], false);
        // `q` is not a token: a and b become neighbours and merge.
        assert_eq!(ids(&m, "aqb"), [3]);
        assert!(m.tokenize("").expect("empty").is_empty());
    }

    #[test]
    fn later_duplicates_win_as_in_tokenizers() {
        // Two merges of (a b): the later rank counts, so (b c) goes first.
        let m = model(&[("a", "b"), ("b", "c"), ("a", "b")], false);
        assert_eq!(ids(&m, "abc"), [0, 4]);
        // Two tokens with the same text: its id is the later one's.
        let m = FlatBpe::new(&["a", "b", "a"], std::iter::empty(), false).expect("model");
        assert_eq!(m.token_to_id("a"), Some(2));
        assert_eq!(m.id_to_token(0).as_deref(), Some("a"));
        assert_eq!(m.get_vocab_size(), 3);
    }

    #[test]
    fn a_merge_of_unknown_tokens_is_an_error_naming_it() {
        let err = FlatBpe::new(&["a", "b"], [("a", "b")].into_iter(), false)
            .err()
            .expect("ab is not a token");
        assert!(err.contains("`a b`") && err.contains("`ab`"), "{err}");
        let err = FlatBpe::new(&["a", "ab"], [("a", "q")].into_iter(), false)
            .err()
            .expect("q is not a token");
        assert!(err.contains("`q`"), "{err}");
    }

    #[test]
    fn a_long_run_merges_in_n_log_n() {
        // 200,000 letters of one word: quadratic merging would take minutes.
        let m = model(&[("a", "a"), ("aa", "aa")], false);
        let word = "a".repeat(200_001);
        let got = ids(&m, &word);
        assert_eq!(got.len(), 50_001);
        assert!(got[..50_000].iter().all(|&id| id == 8));
        assert_eq!(got[50_000], 0);
    }
}
