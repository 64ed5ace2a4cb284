//! Incremental detokenization for streaming output.

use super::Tokenizer;

/// Collects token pieces and hands out text only once it is complete UTF-8:
/// byte-level BPE splits multi-byte characters across tokens, and printing
/// half a character would garble the stream.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// The start of a character whose remaining bytes have not come yet.
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the piece of `id` and returns the text that became complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.push_bytes(tokenizer.piece(id))
    }

    /// Appends `bytes` and returns the text that became complete. Invalid bytes
    /// (not merely unfinished ones) come out as U+FFFD.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Unfinished sequence at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream. A character still unfinished (generation stopped between its
    /// bytes) is dropped, not shown as U+FFFD; returns how many bytes it had.
    pub fn finish(self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes each piece; returns what each push gave and the bytes dropped at the end.
    fn decode(pieces: &[&[u8]]) -> (Vec<String>, usize) {
        let mut d = StreamDecoder::new();
        let out = pieces.iter().map(|p| d.push_bytes(p)).collect();
        (out, d.finish())
    }

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        // '€' is E2 82 AC.
        let (out, dropped) = decode(&[b"a\xe2", b"\x82", b"\xacb"]);
        assert_eq!(
            (out, dropped),
            (vec!["a".into(), "".into(), "€b".into()], 0)
        );
        let (out, dropped) = decode(&[b"\xe2\x82", b"\xac"]);
        assert_eq!((out, dropped), (vec!["".into(), "€".into()], 0));
    }

    #[test]
    fn an_unfinished_character_at_the_cut_is_dropped() {
        // Cut after one and after two of the three bytes of '€'.
        assert_eq!(decode(&[b"ab", b"\xe2"]), (vec!["ab".into(), "".into()], 1));
        assert_eq!(
            decode(&[b"ab", b"\xe2", b"\x82"]),
            (vec!["ab".into(), "".into(), "".into()], 2)
        );
        // Three of the four bytes of U+1F600.
        assert_eq!(decode(&[b"\xf0\x9f\x98"]), (vec!["".into()], 3));
    }

    #[test]
    fn invalid_bytes_inside_the_text_are_replaced() {
        // A lead byte that the next token does not continue, then a stray continuation
        // byte: each is U+FFFD, the text around passes through.
        let (out, dropped) = decode(&[b"\xe2", b"x", b"\x80y", b"\xe2\x82"]);
        assert_eq!(out, ["", "\u{FFFD}x", "\u{FFFD}y", ""]);
        assert_eq!(dropped, 2);
        // A byte that can never start a character, at the very end, is invalid, not
        // unfinished: it shows.
        assert_eq!(decode(&[b"z\xff"]), (vec!["z\u{FFFD}".into()], 0));
    }
}
