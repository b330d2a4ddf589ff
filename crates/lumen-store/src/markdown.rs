//! Markdown export, for reading and sharing (not for importing back: use
//! JSON for that).

use crate::transfer::Export;

/// Renders an export as Markdown: one `#` section per conversation, one
/// `###` heading per message, images listed by type, size and hash.
pub fn to_markdown(export: &Export) -> String {
    let mut out = String::new();
    for (i, c) in export.conversations.iter().enumerate() {
        if i > 0 {
            out.push_str("\n---\n\n");
        }
        let title = if c.title.trim().is_empty() {
            "Untitled conversation"
        } else {
            c.title.trim()
        };
        out.push_str(&format!("# {title}\n\n"));
        let mut facts = vec![c.created_at.clone()];
        if let Some(m) = &c.model {
            facts.push(format!("model: {m}"));
        }
        out.push_str(&format!("*{}*\n\n", facts.join(" · ")));
        if let Some(s) = c.system_prompt.as_deref().filter(|s| !s.is_empty()) {
            out.push_str(&format!("> **System:** {}\n\n", s.replace('\n', "\n> ")));
        }
        for m in &c.messages {
            let who = match m.role.as_str() {
                "user" => "You",
                "assistant" => "Assistant",
                "system" => "System",
                _ => "Tool",
            };
            let note = match m.status.as_deref() {
                Some("cancelled") => " (stopped)",
                Some("error") => " (failed)",
                _ => "",
            };
            out.push_str(&format!("### {who}{note}\n\n"));
            for a in &m.attachments {
                let size = match (a.width, a.height) {
                    (Some(w), Some(h)) => format!(", {w}×{h}"),
                    _ => String::new(),
                };
                out.push_str(&format!("*[image: {}{size}]*\n\n", a.mime));
            }
            out.push_str(m.content.trim_end());
            out.push_str("\n\n");
        }
    }
    out
}
