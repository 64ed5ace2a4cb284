//! The vocabulary as a byte trie: every token's bytes as the tokenizer emits them (GPT-2
//! byte-level and SentencePiece spellings already decoded by [`Tokenizer::piece`]), built
//! once per model, so that the mask checks a prefix shared by many tokens once.

use crate::tokenizer::Tokenizer;

/// A trie node: its outgoing edges and the tokens whose bytes end here.
#[derive(Debug, Clone, Copy, Default)]
struct TrieNode {
    edges_start: u32,
    edges_end: u32,
    tokens_start: u32,
    tokens_end: u32,
}

/// Tokens by their bytes. Tokens that print nothing (control tokens) are not in it.
#[derive(Debug)]
pub struct TokenTrie {
    nodes: Vec<TrieNode>,
    /// (byte, child node), each node's edges together and sorted by byte.
    edges: Vec<(u8, u32)>,
    tokens: Vec<u32>,
    n_vocab: usize,
    /// Longest token, in bytes.
    depth: usize,
}

impl TokenTrie {
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> TokenTrie {
        let n = tokenizer.vocab_size() as u32;
        TokenTrie::new((0..n).map(|id| (id, tokenizer.piece(id))), n as usize)
    }

    /// A trie of `(token, bytes)` pairs; `n_vocab` is the size of a logits row.
    pub fn new<'a>(pieces: impl Iterator<Item = (u32, &'a [u8])>, n_vocab: usize) -> TokenTrie {
        let mut sorted: Vec<(&[u8], u32)> = pieces
            .filter(|(_, p)| !p.is_empty())
            .map(|(id, p)| (p, id))
            .collect();
        sorted.sort_unstable();
        let depth = sorted.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        // Built as child lists first, then laid out flat.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        for (piece, id) in sorted {
            let mut node = 0usize;
            for &b in piece {
                // Sorted input: a child for `b`, if any, is the last one added.
                node = match children[node].last() {
                    Some(&(last, child)) if last == b => child as usize,
                    _ => {
                        let child = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].push((b, child as u32));
                        child
                    }
                };
            }
            ends[node].push(id);
        }
        let mut nodes = Vec::with_capacity(children.len());
        let (mut edges, mut tokens) = (Vec::new(), Vec::new());
        for (c, t) in children.into_iter().zip(ends) {
            let node = TrieNode {
                edges_start: edges.len() as u32,
                edges_end: (edges.len() + c.len()) as u32,
                tokens_start: tokens.len() as u32,
                tokens_end: (tokens.len() + t.len()) as u32,
            };
            edges.extend(c);
            tokens.extend(t);
            nodes.push(node);
        }
        TokenTrie {
            nodes,
            edges,
            tokens,
            n_vocab,
            depth,
        }
    }

    pub fn root(&self) -> u32 {
        0
    }

    pub fn edges(&self, node: u32) -> &[(u8, u32)] {
        let n = self.nodes[node as usize];
        &self.edges[n.edges_start as usize..n.edges_end as usize]
    }

    pub fn tokens(&self, node: u32) -> &[u32] {
        let n = self.nodes[node as usize];
        &self.tokens[n.tokens_start as usize..n.tokens_end as usize]
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Longest token, in bytes.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Trie nodes (a measure of the mask's worst-case work).
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_share_nodes() {
        let pieces: [(u32, &[u8]); 5] = [(0, b"ab"), (1, b"a"), (2, b""), (3, b"abc"), (4, b"b")];
        let t = TokenTrie::new(pieces.into_iter(), 5);
        // root, a, ab, abc, b
        assert_eq!(t.n_nodes(), 5);
        assert_eq!(t.depth(), 3);
        let edges = t.edges(t.root());
        assert_eq!(edges.iter().map(|e| e.0).collect::<Vec<_>>(), b"ab");
        let a = edges[0].1;
        assert_eq!(t.tokens(a), [1]);
        let ab = t.edges(a)[0].1;
        assert_eq!(t.tokens(ab), [0]);
        assert_eq!(t.tokens(t.edges(ab)[0].1), [3]);
    }
}
