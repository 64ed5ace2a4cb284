//! One generation's constraint: which tokens may come next, given the bytes so far.
//!
//! The mask walks the vocabulary trie depth first, stepping the parse states by one byte per
//! trie edge: a subtree whose prefix leaves the language is skipped whole. A token is allowed
//! when its bytes keep the output a prefix of the schema's language and, with one token less
//! left, the shortest completion still fits (so the value closes before `max_tokens`).

use std::sync::Arc;

use super::matcher::{Frame, Matcher, StateSet, is_complete};
use super::schema::Schema;
use super::vocab::TokenTrie;

/// Most parse states followed at once; more (a pathological `anyOf`) are dropped, which only
/// narrows the output, never makes it invalid.
const MAX_STATES: usize = 1024;

/// The parse of one generation's output.
pub struct Constraint {
    schema: Arc<Schema>,
    trie: Arc<TokenTrie>,
    /// The states after the tokens accepted so far.
    states: StateSet,
    /// The states after each byte of the trie path being walked (index = depth).
    levels: Vec<StateSet>,
    scratch: Vec<Frame>,
    spare: StateSet,
    /// The trie walk's path: (node, next edge to take) per level.
    path: Vec<(u32, usize)>,
    /// The last walk: its states (normalized, see [`Matcher::normalize`]) and every token it
    /// allowed with the completion cost after it. Inside a long string the states repeat from
    /// token to token, and then the walk is not repeated: only the budget is applied again.
    cached_states: StateSet,
    cached: Vec<(u32, u32)>,
    key: StateSet,
}

/// What the mask allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Some tokens (their logits kept, the rest `-inf`).
    Tokens,
    /// Nothing can follow: the value is complete and cannot continue.
    Done,
    /// No token of the vocabulary continues the value (a vocabulary without the needed
    /// bytes); it is not complete.
    Stuck,
}

impl Constraint {
    pub fn new(schema: Arc<Schema>, trie: Arc<TokenTrie>) -> Constraint {
        let states = Matcher::new(&schema).start();
        let levels = vec![StateSet::default(); trie.depth() + 1];
        Constraint {
            schema,
            trie,
            states,
            levels,
            scratch: Vec::new(),
            spare: StateSet::default(),
            path: Vec::new(),
            cached_states: StateSet::default(),
            cached: Vec::new(),
            key: StateSet::default(),
        }
    }

    /// The output so far is a complete value (end of generation is allowed).
    pub fn is_complete(&self) -> bool {
        self.states.iter().any(is_complete)
    }

    /// More bytes may follow.
    pub fn can_continue(&self) -> bool {
        self.states.iter().any(|s| !s.is_empty())
    }

    /// Writes `logits` to `out` with every token that cannot come next set to `-inf`;
    /// `remaining` counts the tokens that may still be generated, this one included. `eog` are
    /// the end-of-generation tokens, allowed once the value is complete.
    pub fn mask(
        &mut self,
        logits: &[f32],
        remaining: usize,
        eog: &[u32],
        out: &mut Vec<f32>,
    ) -> Allowed {
        out.clear();
        out.resize(logits.len(), f32::NEG_INFINITY);
        let complete = self.is_complete();
        if !self.can_continue() {
            return Allowed::Done;
        }
        let budget = u32::try_from(remaining.saturating_sub(1)).unwrap_or(u32::MAX);
        let matcher = Matcher::new(&self.schema);
        matcher.normalize(&self.states, self.trie.depth() as u32, &mut self.key);
        if self.key.frames() != self.cached_states.frames() || self.cached_states.is_empty() {
            self.walk();
            self.cached_states.copy_from(&self.key);
        }
        let mut any = false;
        for &(t, cost) in &self.cached {
            if cost <= budget {
                out[t as usize] = logits[t as usize];
                any = true;
            }
        }
        if !any {
            // The shortest completion no longer fits (a vocabulary without some one-byte
            // token): follow the grammar alone; the generation may then end at max_tokens.
            for &(t, _) in &self.cached {
                out[t as usize] = logits[t as usize];
                any = true;
            }
        }
        if complete {
            for &t in eog {
                if let Some(&l) = logits.get(t as usize) {
                    out[t as usize] = l;
                    any = true;
                }
            }
        }
        if any { Allowed::Tokens } else { Allowed::Stuck }
    }

    /// Lists every token that keeps the output in the language, with the completion cost
    /// after it, in `cached`.
    fn walk(&mut self) {
        let matcher = Matcher::new(&self.schema);
        self.levels[0].copy_from(&self.states);
        self.cached.clear();
        let path = &mut self.path;
        path.clear();
        path.push((self.trie.root(), 0));
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let edges = self.trie.edges(node);
            let Some(&(byte, child)) = edges.get(*next) else {
                path.pop();
                continue;
            };
            *next += 1;
            let depth = path.len() - 1;
            let (done, rest) = self.levels.split_at_mut(depth + 1);
            let to = &mut rest[0];
            to.clear();
            matcher.step(&done[depth], byte, to, &mut self.scratch);
            if to.is_empty() {
                continue;
            }
            let tokens = self.trie.tokens(child);
            if !tokens.is_empty() {
                let cost = to.iter().map(|s| matcher.cost(s)).min().unwrap_or(u32::MAX);
                self.cached.extend(tokens.iter().map(|&t| (t, cost)));
            }
            path.push((child, 0));
        }
    }

    /// Moves the parse past `token`'s bytes (which the last mask allowed).
    pub fn advance(&mut self, bytes: &[u8]) {
        let matcher = Matcher::new(&self.schema);
        for &b in bytes {
            self.spare.clear();
            matcher.step(&self.states, b, &mut self.spare, &mut self.scratch);
            std::mem::swap(&mut self.states, &mut self.spare);
            self.states.dedup(&mut self.spare);
            self.states.truncate(MAX_STATES);
        }
    }
}
