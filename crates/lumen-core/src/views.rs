//! What the chat screen shows: a conversation with every message of every
//! branch and their images' thumbnails; and the thread (one branch, root to
//! leaf) that a turn continues.

use std::collections::HashMap;

use lumen_store::{AttachmentId, Conversation, ConversationId, Message, MessageId};
use serde::Serialize;

use crate::Core;
use crate::chat::ChatSettings;
use crate::error::Result;
use crate::images::jpeg_data_url;

/// An image attached to a message (its bytes stay in the history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct AttachmentView {
    /// Its id.
    pub id: AttachmentId,
    /// Its type.
    pub mime: String,
    /// Pixel width.
    pub width: Option<u32>,
    /// Pixel height.
    pub height: Option<u32>,
    /// Size, bytes.
    pub bytes: u64,
    /// A small JPEG, as a `data:` URL.
    pub thumbnail: Option<String>,
}

/// A message with its attachments.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MessageView {
    /// The message. Its `parent_id` is always set except on the first
    /// message: messages stored without one (imported from older exports)
    /// follow the message before them.
    #[serde(flatten)]
    #[cfg_attr(feature = "ts", ts(flatten))]
    pub message: Message,
    /// Its images.
    pub attachments: Vec<AttachmentView>,
}

/// An open conversation: everything the chat screen shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ConversationView {
    /// The conversation.
    pub conversation: Conversation,
    /// Its sampling settings (unset = the model's recommendation).
    pub settings: ChatSettings,
    /// Every message of every branch, oldest first. Messages sharing a
    /// parent are branches: regenerated replies, edited questions.
    pub messages: Vec<MessageView>,
    /// The reply being written now, if any.
    pub replying: Option<MessageId>,
}

/// The message each message follows. Lumen stores a parent for every
/// message but a conversation's first ones (an edited first question is a
/// second root); a conversation with no parents at all (imported from a
/// linear export) is read as one thread, each message after the one
/// before it.
pub(crate) fn effective_parents(messages: &[Message]) -> Vec<Option<MessageId>> {
    if messages.iter().any(|m| m.parent_id.is_some()) {
        return messages.iter().map(|m| m.parent_id).collect();
    }
    (0..messages.len())
        .map(|i| i.checked_sub(1).map(|p| messages[p].id))
        .collect()
}

/// The thread ending at `leaf`, root first; empty for `None`. Parents that
/// are missing (deleted) end the walk; a cycle cannot loop.
pub(crate) fn thread(messages: &[Message], leaf: Option<MessageId>) -> Vec<Message> {
    let parents = effective_parents(messages);
    let index: HashMap<MessageId, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id, i))
        .collect();
    let mut out = Vec::new();
    let mut at = leaf.and_then(|id| index.get(&id).copied());
    while let Some(i) = at {
        if out.len() == messages.len() {
            break;
        }
        out.push(messages[i].clone());
        at = parents[i].and_then(|p| index.get(&p).copied());
    }
    out.reverse();
    out
}

impl Core {
    /// A conversation with all its messages and their thumbnails.
    pub async fn open_conversation(&self, id: ConversationId) -> Result<ConversationView> {
        let conversation = self.store.conversation(id).await?;
        let mut stored = self.store.messages(id).await?;
        let parents = effective_parents(&stored);
        for (m, p) in stored.iter_mut().zip(parents) {
            m.parent_id = p;
        }
        let mut attachments: HashMap<MessageId, Vec<AttachmentView>> = HashMap::new();
        for a in self.store.conversation_attachments(id).await? {
            attachments
                .entry(a.message_id)
                .or_default()
                .push(AttachmentView {
                    id: a.id,
                    mime: a.mime,
                    width: a.width,
                    height: a.height,
                    bytes: a.bytes,
                    thumbnail: a.thumbnail.as_deref().map(jpeg_data_url),
                });
        }
        let messages = stored
            .into_iter()
            .map(|message| MessageView {
                attachments: attachments.remove(&message.id).unwrap_or_default(),
                message,
            })
            .collect();
        let settings = ChatSettings::of(&conversation);
        let replying = self.replying_message(id);
        Ok(ConversationView {
            conversation,
            settings,
            messages,
            replying,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_store::{MessageStats, Role, Status};

    fn msg(id: i64, parent: Option<i64>) -> Message {
        Message {
            id: MessageId(id),
            conversation_id: ConversationId(1),
            parent_id: parent.map(MessageId),
            role: if id % 2 == 1 {
                Role::User
            } else {
                Role::Assistant
            },
            content: format!("m{id}"),
            status: Status::Complete,
            error: None,
            model: None,
            stats: MessageStats::default(),
            created_at: id,
        }
    }

    fn ids(t: &[Message]) -> Vec<i64> {
        t.iter().map(|m| m.id.0).collect()
    }

    #[test]
    fn threads_follow_parents_through_branches() {
        // 1 → 2 → 3 → 4, and a regenerated reply 5 beside 4, and an
        // edited question 6 beside 3 with its reply 7.
        let all = vec![
            msg(1, None),
            msg(2, Some(1)),
            msg(3, Some(2)),
            msg(4, Some(3)),
            msg(5, Some(3)),
            msg(6, Some(2)),
            msg(7, Some(6)),
        ];
        assert_eq!(ids(&thread(&all, Some(MessageId(4)))), [1, 2, 3, 4]);
        assert_eq!(ids(&thread(&all, Some(MessageId(5)))), [1, 2, 3, 5]);
        assert_eq!(ids(&thread(&all, Some(MessageId(7)))), [1, 2, 6, 7]);
        assert!(thread(&all, None).is_empty());
        assert!(thread(&all, Some(MessageId(99))).is_empty());
    }

    #[test]
    fn messages_without_parents_follow_the_one_before() {
        let all = vec![msg(1, None), msg(2, None), msg(3, None)];
        assert_eq!(ids(&thread(&all, Some(MessageId(3)))), [1, 2, 3]);
        assert_eq!(
            effective_parents(&all),
            [None, Some(MessageId(1)), Some(MessageId(2))]
        );
    }

    #[test]
    fn an_edited_first_question_is_a_second_root() {
        let all = vec![msg(1, None), msg(2, Some(1)), msg(3, None), msg(4, Some(3))];
        assert_eq!(ids(&thread(&all, Some(MessageId(4)))), [3, 4]);
        assert_eq!(ids(&thread(&all, Some(MessageId(2)))), [1, 2]);
    }

    #[test]
    fn broken_links_end_the_thread_and_cycles_stop() {
        let all = vec![msg(1, None), msg(2, Some(42)), msg(3, Some(2))];
        assert_eq!(ids(&thread(&all, Some(MessageId(3)))), [2, 3]);
        let cycle = vec![msg(1, Some(2)), msg(2, Some(1))];
        assert_eq!(thread(&cycle, Some(MessageId(2))).len(), 2);
    }
}
