//! Chat rendering: messages → the prompt text the model was trained on.
//!
//! Mirrors llama.cpp's built-in formatters (`llama_chat_apply_template`),
//! chosen from the `tokenizer.chat_template` string by the same markers.

use std::ops::Range;

use crate::gguf::{Gguf, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A rendered conversation: its text, and the byte ranges of it that are message content
/// (everything else is the template's markup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub content: Vec<Range<usize>>,
}

impl Rendered {
    /// `text` as content only: no markup.
    pub fn literal(text: &str) -> Self {
        let mut out = Rendered::default();
        out.content(text);
        out
    }

    fn markup(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn content(&mut self, s: &str) {
        let start = self.text.len();
        self.text.push_str(s);
        if !s.is_empty() {
            self.content.push(start..self.text.len());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// BitNet-b1.58-2B-4T: `System: …`, `User: …<|eot_id|>Assistant: `.
    Bitnet,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>`.
    Llama3,
    /// `<|im_start|>role\n…<|im_end|>\n`.
    ChatMl,
}

impl ChatTemplate {
    pub fn from_gguf(g: &Gguf) -> Self {
        let template = g.get("tokenizer.chat_template").and_then(Value::as_str);
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        Self::detect(template, arch)
    }

    /// Checks markers in llama.cpp's order; the BitNet converter writes a
    /// placeholder template whose only recognisable marker is "BITNET".
    pub fn detect(template: Option<&str>, arch: &str) -> Self {
        match template {
            None if arch.starts_with("bitnet") => Self::Bitnet,
            None => {
                log::warn!("no tokenizer.chat_template; using chatml, as llama.cpp does");
                Self::ChatMl
            }
            Some(t) if t.contains("<|im_start|>") => Self::ChatMl,
            Some(t) if t.contains("<|start_header_id|>") && t.contains("<|end_header_id|>") => {
                Self::Llama3
            }
            Some(t) if t.contains("BITNET") => Self::Bitnet,
            Some(_) => {
                log::warn!(
                    "tokenizer.chat_template is not a format bitnetd knows; using the bitnet format"
                );
                Self::Bitnet
            }
        }
    }

    /// One message on its own. Bitnet's user message already ends with the
    /// assistant header, so formats concatenate message by message.
    pub fn render_message(&self, message: &Message) -> String {
        let mut out = Rendered::default();
        self.render_message_into(message, &mut out);
        out.text
    }

    fn render_message_into(&self, message: &Message, out: &mut Rendered) {
        let content = &message.content;
        match (self, message.role) {
            (Self::Bitnet, Role::System) => {
                out.markup("System: ");
                out.content(content);
            }
            (Self::Bitnet, Role::User) => {
                out.markup("User: ");
                out.content(content);
                out.markup("<|eot_id|>Assistant: ");
            }
            (Self::Bitnet, Role::Assistant) => out.content(content),
            (Self::Llama3, role) => {
                out.markup("<|start_header_id|>");
                out.markup(role.as_str());
                out.markup("<|end_header_id|>\n\n");
                out.content(content.trim());
                out.markup("<|eot_id|>");
            }
            (Self::ChatMl, role) => {
                out.markup("<|im_start|>");
                out.markup(role.as_str());
                out.markup("\n");
                out.content(content);
                out.markup("<|im_end|>\n");
            }
        }
    }

    /// What opens the assistant's reply; empty for Bitnet (see `render_message`).
    pub fn assistant_prompt(&self) -> &'static str {
        match self {
            Self::Bitnet => "",
            Self::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            Self::ChatMl => "<|im_start|>assistant\n",
        }
    }

    /// The whole conversation. No BOS: that comes from the tokenizer.
    pub fn render(&self, messages: &[Message], add_assistant_prompt: bool) -> String {
        self.render_marked(messages, add_assistant_prompt).text
    }

    /// [`ChatTemplate::render`], also saying which parts are the messages' own text: the
    /// daemon tokenizes special-token text only in the template's markup, so that a client
    /// cannot write control tokens (`<|eot_id|>`, a forged system header) into its content.
    pub fn render_marked(&self, messages: &[Message], add_assistant_prompt: bool) -> Rendered {
        let mut out = Rendered::default();
        for m in messages {
            self.render_message_into(m, &mut out);
        }
        if add_assistant_prompt {
            out.markup(self.assistant_prompt());
        }
        out
    }

    /// The start of an interactive session (llama-cli `-cnv` tokenizes this
    /// first, after BOS).
    pub fn render_system(&self, content: &str) -> String {
        self.render_message(&Message::new(Role::System, content))
    }

    /// The text one user turn appends to the session: the user message and
    /// the assistant prompt (llama-cli's diff of successive renderings).
    pub fn render_user_turn(&self, content: &str) -> String {
        let mut out = self.render_message(&Message::new(Role::User, content));
        out.push_str(self.assistant_prompt());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::test_gguf::{gguf, str};

    const SYSTEM: &str = "You are a helpful assistant";
    const USER: &str = "What is the capital of France?";

    fn c0() -> Vec<Message> {
        vec![
            Message::new(Role::System, SYSTEM),
            Message::new(Role::User, USER),
        ]
    }

    #[test]
    fn bitnet_renders_reference_chat_exactly() {
        let expected = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/l3tiny_c0.rendered.txt"
        ))
        .unwrap();
        assert_eq!(ChatTemplate::Bitnet.render(&c0(), true), expected);
        // The -cnv form appends the same text piece by piece.
        let t = ChatTemplate::Bitnet;
        assert_eq!(
            t.render_system(SYSTEM) + &t.render_user_turn(USER),
            expected
        );
    }

    #[test]
    fn bitnet_multi_turn_has_no_separators_after_replies() {
        let mut messages = c0();
        messages.push(Message::new(Role::Assistant, "Paris."));
        messages.push(Message::new(Role::User, "And Spain?"));
        let text = ChatTemplate::Bitnet.render(&messages, true);
        assert!(
            text.ends_with("Assistant: Paris.User: And Spain?<|eot_id|>Assistant: "),
            "{text}"
        );
    }

    #[test]
    fn other_formats() {
        let m = [Message::new(Role::User, " hi ")];
        assert_eq!(
            ChatTemplate::Llama3.render(&m, true),
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            ChatTemplate::ChatMl.render(&m, false),
            "<|im_start|>user\n hi <|im_end|>\n"
        );
    }

    #[test]
    fn detection() {
        // The 2B-4T placeholder template, as found in the reference file.
        let placeholder =
            "{{ 'Human: ' + message['content'] + '\\n\\nBITNETAssistant: ' + eos_token }}";
        let g = gguf(&[
            ("general.architecture", str("bitnet-b1.58")),
            ("tokenizer.chat_template", str(placeholder)),
        ]);
        assert_eq!(ChatTemplate::from_gguf(&g), ChatTemplate::Bitnet);
        let g = gguf(&[("general.architecture", str("bitnet-b1.58"))]);
        assert_eq!(ChatTemplate::from_gguf(&g), ChatTemplate::Bitnet);
        assert_eq!(ChatTemplate::detect(None, "llama"), ChatTemplate::ChatMl);
        assert_eq!(
            ChatTemplate::detect(Some("<|start_header_id|>x<|end_header_id|>"), "llama"),
            ChatTemplate::Llama3
        );
        assert_eq!(
            ChatTemplate::detect(Some("<|im_start|>"), "bitnet"),
            ChatTemplate::ChatMl
        );
        assert_eq!(
            ChatTemplate::detect(Some("{{ unknown }}"), "bitnet"),
            ChatTemplate::Bitnet
        );
    }
}
