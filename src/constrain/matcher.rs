//! The byte-level JSON state machine of a compiled [`Schema`].
//!
//! A parse state is a stack of [`Frame`]s (the innermost value on top). Where the grammar
//! branches (`anyOf`, `enum`, which property a key starts) every branch becomes its own
//! state, so a [`StateSet`] holds all the stacks still alive. Feeding a byte maps each stack to
//! zero or more successors; the bytes so far are a prefix of a valid value exactly while the
//! set is non-empty.
//!
//! Outputs must end, so the grammar is bounded where JSON is not: at most [`WS_MAX`]
//! whitespace bytes in a row, [`MAX_INT_DIGITS`] integer digits, [`MAX_FRAC_DIGITS`] fraction
//! digits, [`MAX_EXP_DIGITS`] exponent digits, strings of `maxLength` (or
//! [`DEFAULT_MAX_STRING_CHARS`](super::schema::DEFAULT_MAX_STRING_CHARS)) characters, and
//! [`MAX_DEPTH`] nested frames. No whitespace follows the top-level value.

use super::schema::{Node, NodeId, Object, Schema, required_cost};

/// Whitespace bytes allowed in a row between tokens of the JSON text.
pub const WS_MAX: u8 = 2;
pub const MAX_INT_DIGITS: u8 = 15;
pub const MAX_FRAC_DIGITS: u8 = 15;
/// Two: 15 digits and a three-digit exponent would leave the range of an f64, which
/// parsers refuse.
pub const MAX_EXP_DIGITS: u8 = 2;
/// Deepest stack: bounds the nesting of `{}` (any value).
pub const MAX_DEPTH: usize = 32;
/// Longest key of an object's additional properties, in characters.
pub const MAX_KEY_CHARS: u32 = 64;
/// A property slot that stands for an additional (undeclared) key.
const EXTRA: u8 = u8::MAX;

/// One level of the parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A value of `node` comes next, after `ws` whitespace bytes so far.
    Value {
        node: NodeId,
        ws: u8,
    },
    /// Inside a fixed JSON text, `pos` bytes matched.
    Literal {
        lit: u32,
        pos: u32,
    },
    /// Inside a string, after its opening quote.
    Str(Str),
    Number {
        integer: bool,
        phase: NumPhase,
    },
    Object {
        node: NodeId,
        /// Bit i: property i has been given.
        seen: u64,
        phase: ObjPhase,
        ws: u8,
    },
    Array {
        node: NodeId,
        count: u32,
        phase: ArrPhase,
        ws: u8,
    },
}

/// A string in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str {
    /// Characters so far (an escape counts as one).
    chars: u32,
    min: u32,
    max: u32,
    esc: Esc,
    /// For an additional key: the object, whose declared names this key must not spell.
    key_of: Option<NodeId>,
    /// Bytes so far, and the declared names (bits) that still match them as a prefix.
    bytes: u32,
    maybe_declared: u64,
}

/// What the next string bytes must complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// `left` hex digits of `\u` to go; `d`: the first was d or D (a surrogate must not
    /// follow: a lone surrogate is not text).
    Hex {
        left: u8,
        d: bool,
    },
    /// `left` continuation bytes of a UTF-8 character, the next one in `lo..=hi`.
    Utf8 {
        left: u8,
        lo: u8,
        hi: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumPhase {
    /// After `-`.
    Sign,
    /// After a leading `0`: no other digit may follow.
    Zero,
    Int(u8),
    /// After `.`.
    Dot,
    Frac(u8),
    /// After `e` or `E`.
    Exp,
    ExpSign,
    ExpDigits(u8),
}

impl NumPhase {
    /// A number may end here.
    fn can_end(self) -> bool {
        matches!(
            self,
            NumPhase::Zero | NumPhase::Int(_) | NumPhase::Frac(_) | NumPhase::ExpDigits(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjPhase {
    /// After `{`.
    Open,
    /// Inside declared key `prop` (after its opening quote), `pos` bytes matched.
    Key { prop: u8, pos: u16 },
    /// An additional key is being read (a string frame is on top).
    ExtraKey,
    /// Before the colon of `prop` (or [`EXTRA`]).
    Colon(u8),
    /// The value of `prop` is being read (on top).
    Member(u8),
    /// After a member.
    After,
    /// After a comma: a key must follow.
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrPhase {
    Open,
    Member,
    After,
    Comma,
}

/// Parse stacks stored end to end, so that stepping allocates nothing once warm.
#[derive(Debug, Clone, Default)]
pub struct StateSet {
    frames: Vec<Frame>,
    ends: Vec<u32>,
}

impl StateSet {
    pub fn clear(&mut self) {
        self.frames.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> &[Frame] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.frames[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[Frame]> {
        (0..self.len()).map(|i| self.get(i))
    }

    fn push(&mut self, base: &[Frame], top: &[Frame]) {
        self.frames.extend_from_slice(base);
        self.frames.extend_from_slice(top);
        self.ends.push(self.frames.len() as u32);
    }

    /// All stacks' frames end to end (with `ends`, the whole set).
    pub fn frames(&self) -> (&[Frame], &[u32]) {
        (&self.frames, &self.ends)
    }

    /// Keeps the first `n` stacks.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.frames.truncate(self.ends[n - 1] as usize);
            self.ends.truncate(n);
        }
    }

    /// Copies `other`, reusing this set's buffers.
    pub fn copy_from(&mut self, other: &StateSet) {
        self.frames.clone_from(&other.frames);
        self.ends.clone_from(&other.ends);
    }

    /// Drops stacks equal to an earlier one (branches that met again).
    pub fn dedup(&mut self, scratch: &mut StateSet) {
        scratch.clear();
        for s in self.iter() {
            if !scratch.iter().any(|t| t == s) {
                scratch.push(s, &[]);
            }
        }
        std::mem::swap(self, scratch);
    }
}

/// A stack that holds a complete value: empty, or a top-level number that may end here.
pub fn is_complete(stack: &[Frame]) -> bool {
    match stack {
        [] => true,
        [Frame::Number { phase, .. }] => phase.can_end(),
        _ => false,
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// The steps of one schema's grammar.
pub struct Matcher<'a> {
    pub schema: &'a Schema,
}

impl<'a> Matcher<'a> {
    pub fn new(schema: &'a Schema) -> Self {
        Matcher { schema }
    }

    /// The states before any byte: the root value.
    pub fn start(&self) -> StateSet {
        let mut s = StateSet::default();
        s.push(&[], &[Frame::Value { node: 0, ws: 0 }]);
        s
    }

    fn object(&self, node: NodeId) -> &'a Object {
        match &self.schema.nodes[node as usize] {
            Node::Object(o) => o,
            other => unreachable!("node {node} is {other:?}, not an object"),
        }
    }

    fn array(&self, node: NodeId) -> (NodeId, u32, Option<u32>) {
        match self.schema.nodes[node as usize] {
            Node::Array { items, min, max } => (items, min, max),
            ref other => unreachable!("node {node} is {other:?}, not an array"),
        }
    }

    /// `states` with what cannot change the next token's mask taken out, into `out`: a
    /// string's character count once it is past `minLength` and no token of `depth` bytes
    /// can reach `maxLength` (and its byte count, which only additional keys use). Two
    /// states with equal normal forms allow the same tokens at the same completion costs.
    pub fn normalize(&self, states: &StateSet, depth: u32, out: &mut StateSet) {
        out.copy_from(states);
        for f in &mut out.frames {
            if let Frame::Str(s) = f
                && s.key_of.is_none()
                && s.chars >= s.min
                && s.chars.saturating_add(depth) <= s.max
            {
                s.chars = s.min;
                s.bytes = 0;
            }
        }
    }

    /// Feeds `b` to every stack of `from`, adding the successors to `to`. `scratch` is a
    /// buffer for the stack being worked on.
    pub fn step(&self, from: &StateSet, b: u8, to: &mut StateSet, scratch: &mut Vec<Frame>) {
        for s in from.iter() {
            if s.is_empty() {
                continue;
            }
            scratch.clear();
            scratch.extend_from_slice(s);
            self.feed(scratch, b, to);
        }
    }

    /// Feeds `b` to the stack's top frame; successors go to `out`. `stack` is left as it was.
    fn feed(&self, stack: &mut Vec<Frame>, b: u8, out: &mut StateSet) {
        let n = stack.len();
        let top = stack[n - 1];
        let replace = |out: &mut StateSet, stack: &[Frame], frames: &[Frame]| {
            out.push(&stack[..n - 1], frames);
        };
        match top {
            Frame::Value { node, ws } => {
                if is_ws(b) {
                    if ws < WS_MAX {
                        replace(out, stack, &[Frame::Value { node, ws: ws + 1 }]);
                    }
                    return;
                }
                self.start_value(stack, node, b, out);
            }
            Frame::Literal { lit, pos } => {
                let text = &self.schema.literals[lit as usize];
                if text[pos as usize] == b {
                    if pos as usize + 1 == text.len() {
                        self.pop(stack, None, out);
                    } else {
                        let pos = pos + 1;
                        replace(out, stack, &[Frame::Literal { lit, pos }]);
                    }
                }
            }
            Frame::Str(s) => self.feed_string(stack, s, b, out),
            Frame::Number { integer, phase } => {
                let digit = b.is_ascii_digit();
                let next = match phase {
                    NumPhase::Sign if b == b'0' => Some(NumPhase::Zero),
                    NumPhase::Sign if digit => Some(NumPhase::Int(1)),
                    NumPhase::Int(k) if digit && k < MAX_INT_DIGITS => Some(NumPhase::Int(k + 1)),
                    NumPhase::Zero | NumPhase::Int(_) if b == b'.' && !integer => {
                        Some(NumPhase::Dot)
                    }
                    NumPhase::Zero | NumPhase::Int(_) | NumPhase::Frac(_)
                        if matches!(b, b'e' | b'E') && !integer =>
                    {
                        Some(NumPhase::Exp)
                    }
                    NumPhase::Dot if digit => Some(NumPhase::Frac(1)),
                    NumPhase::Frac(k) if digit && k < MAX_FRAC_DIGITS => {
                        Some(NumPhase::Frac(k + 1))
                    }
                    NumPhase::Exp if matches!(b, b'+' | b'-') => Some(NumPhase::ExpSign),
                    NumPhase::Exp | NumPhase::ExpSign if digit => Some(NumPhase::ExpDigits(1)),
                    NumPhase::ExpDigits(k) if digit && k < MAX_EXP_DIGITS => {
                        Some(NumPhase::ExpDigits(k + 1))
                    }
                    _ => None,
                };
                match next {
                    Some(phase) => replace(out, stack, &[Frame::Number { integer, phase }]),
                    // The number ends; the byte belongs to what follows it.
                    None if phase.can_end() => self.pop(stack, Some(b), out),
                    None => {}
                }
            }
            Frame::Object {
                node,
                seen,
                phase,
                ws,
            } => self.feed_object(stack, node, seen, phase, ws, b, out),
            Frame::Array {
                node,
                count,
                phase,
                ws,
            } => {
                let (items, min, max) = self.array(node);
                let frame = |phase, ws| Frame::Array {
                    node,
                    count,
                    phase,
                    ws,
                };
                if is_ws(b) && phase != ArrPhase::Member {
                    if ws < WS_MAX {
                        replace(out, stack, &[frame(phase, ws + 1)]);
                    }
                    return;
                }
                match phase {
                    ArrPhase::Open if b == b']' => {
                        if min == 0 {
                            self.pop(stack, None, out);
                        }
                    }
                    ArrPhase::Open | ArrPhase::Comma => {
                        if max.is_none_or(|max| count < max) {
                            stack[n - 1] = frame(ArrPhase::Member, 0);
                            stack.push(Frame::Value { node: items, ws: 0 });
                            self.feed(stack, b, out);
                            stack.pop();
                            stack[n - 1] = top;
                        }
                    }
                    ArrPhase::After if b == b',' => {
                        if max.is_none_or(|max| count < max) {
                            replace(out, stack, &[frame(ArrPhase::Comma, 0)]);
                        }
                    }
                    ArrPhase::After if b == b']' => {
                        if count >= min {
                            self.pop(stack, None, out);
                        }
                    }
                    ArrPhase::After | ArrPhase::Member => {}
                }
            }
        }
    }

    /// The first byte `b` of a value of `node`, which replaces the stack's top.
    fn start_value(&self, stack: &mut Vec<Frame>, node: NodeId, b: u8, out: &mut StateSet) {
        let n = stack.len();
        let base_len = n - 1;
        match &self.schema.nodes[node as usize] {
            Node::Literals(ids) => {
                for &lit in ids {
                    let text = &self.schema.literals[lit as usize];
                    if text[0] != b {
                        continue;
                    }
                    if text.len() == 1 {
                        self.pop(stack, None, out);
                    } else {
                        out.push(&stack[..base_len], &[Frame::Literal { lit, pos: 1 }]);
                    }
                }
            }
            &Node::String { min, max } if b == b'"' => {
                let s = Str {
                    chars: 0,
                    min,
                    max,
                    esc: Esc::None,
                    key_of: None,
                    bytes: 0,
                    maybe_declared: 0,
                };
                out.push(&stack[..base_len], &[Frame::Str(s)]);
            }
            &Node::Number { integer } => {
                let phase = match b {
                    b'-' => NumPhase::Sign,
                    b'0' => NumPhase::Zero,
                    b'1'..=b'9' => NumPhase::Int(1),
                    _ => return,
                };
                out.push(&stack[..base_len], &[Frame::Number { integer, phase }]);
            }
            Node::Object(_) if b == b'{' && n < MAX_DEPTH => {
                let frame = Frame::Object {
                    node,
                    seen: 0,
                    phase: ObjPhase::Open,
                    ws: 0,
                };
                out.push(&stack[..base_len], &[frame]);
            }
            Node::Array { .. } if b == b'[' && n < MAX_DEPTH => {
                let frame = Frame::Array {
                    node,
                    count: 0,
                    phase: ArrPhase::Open,
                    ws: 0,
                };
                out.push(&stack[..base_len], &[frame]);
            }
            Node::AnyOf(alts) => {
                let top = stack[base_len];
                for &alt in alts {
                    stack[base_len] = Frame::Value { node: alt, ws: 0 };
                    self.start_value(stack, alt, b, out);
                }
                stack[base_len] = top;
            }
            _ => {}
        }
    }

    fn feed_string(&self, stack: &mut Vec<Frame>, s: Str, b: u8, out: &mut StateSet) {
        let n = stack.len();
        let mut next = s;
        next.bytes += 1;
        match s.esc {
            Esc::None => {
                if b == b'"' {
                    if s.chars < s.min || self.spells_declared_key(&s) {
                        return;
                    }
                    return self.pop(stack, None, out);
                }
                if b < 0x20 || s.chars >= s.max {
                    return;
                }
                if b == b'\\' {
                    // Additional keys take no escapes, so that they are compared with the
                    // declared names byte by byte.
                    if s.key_of.is_some() {
                        return;
                    }
                    next.esc = Esc::Backslash;
                } else if b < 0x80 {
                    next.chars += 1;
                } else {
                    let (left, lo, hi) = match b {
                        0xC2..=0xDF => (1, 0x80, 0xBF),
                        0xE0 => (2, 0xA0, 0xBF),
                        0xED => (2, 0x80, 0x9F),
                        0xE1..=0xEF => (2, 0x80, 0xBF),
                        0xF0 => (3, 0x90, 0xBF),
                        0xF1..=0xF3 => (3, 0x80, 0xBF),
                        0xF4 => (3, 0x80, 0x8F),
                        _ => return,
                    };
                    next.esc = Esc::Utf8 { left, lo, hi };
                }
            }
            Esc::Utf8 { left, lo, hi } => {
                if !(lo..=hi).contains(&b) {
                    return;
                }
                next.esc = if left == 1 {
                    next.chars += 1;
                    Esc::None
                } else {
                    Esc::Utf8 {
                        left: left - 1,
                        lo: 0x80,
                        hi: 0xBF,
                    }
                };
            }
            Esc::Backslash => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    next.esc = Esc::None;
                    next.chars += 1;
                }
                b'u' => next.esc = Esc::Hex { left: 4, d: false },
                _ => return,
            },
            Esc::Hex { left, d } => {
                if !b.is_ascii_hexdigit() || (left == 3 && d && !matches!(b, b'0'..=b'7')) {
                    return;
                }
                next.esc = if left == 1 {
                    next.chars += 1;
                    Esc::None
                } else {
                    Esc::Hex {
                        left: left - 1,
                        d: left == 4 && matches!(b, b'd' | b'D'),
                    }
                };
            }
        }
        if let Some(obj) = s.key_of {
            let props = &self.object(obj).properties;
            let pos = s.bytes as usize;
            let mut m = s.maybe_declared;
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                let key = &props[i].0;
                if key.len() <= pos || key[pos] != b {
                    next.maybe_declared &= !(1 << i);
                }
            }
        }
        out.push(&stack[..n - 1], &[Frame::Str(next)]);
    }

    /// An additional key whose bytes so far are exactly a declared name.
    fn spells_declared_key(&self, s: &Str) -> bool {
        let Some(obj) = s.key_of else {
            return false;
        };
        let props = &self.object(obj).properties;
        let mut m = s.maybe_declared;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            // The stored key ends with its closing quote.
            if props[i].0.len() == s.bytes as usize + 1 {
                return true;
            }
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn feed_object(
        &self,
        stack: &mut Vec<Frame>,
        node: NodeId,
        seen: u64,
        phase: ObjPhase,
        ws: u8,
        b: u8,
        out: &mut StateSet,
    ) {
        let n = stack.len();
        let o = self.object(node);
        let frame = |seen, phase, ws| Frame::Object {
            node,
            seen,
            phase,
            ws,
        };
        let takes_ws = matches!(
            phase,
            ObjPhase::Open | ObjPhase::Colon(_) | ObjPhase::After | ObjPhase::Comma
        );
        if takes_ws && is_ws(b) {
            if ws < WS_MAX {
                out.push(&stack[..n - 1], &[frame(seen, phase, ws + 1)]);
            }
            return;
        }
        let all_required = o.required & !seen == 0;
        let all_props = (1u64 << o.properties.len()).wrapping_sub(1);
        let more_keys = o.additional.is_some() || seen != all_props;
        match phase {
            ObjPhase::Open | ObjPhase::After if b == b'}' && all_required => {
                self.pop(stack, None, out);
            }
            ObjPhase::Open | ObjPhase::Comma if b == b'"' => {
                for i in 0..o.properties.len() {
                    if seen & (1 << i) == 0 {
                        let phase = ObjPhase::Key {
                            prop: i as u8,
                            pos: 0,
                        };
                        out.push(&stack[..n - 1], &[frame(seen, phase, 0)]);
                    }
                }
                if o.additional.is_some() {
                    let key = Str {
                        chars: 0,
                        min: 0,
                        max: MAX_KEY_CHARS,
                        esc: Esc::None,
                        key_of: Some(node),
                        bytes: 0,
                        maybe_declared: all_props,
                    };
                    let frames = [frame(seen, ObjPhase::ExtraKey, 0), Frame::Str(key)];
                    out.push(&stack[..n - 1], &frames);
                }
            }
            ObjPhase::Key { prop, pos } => {
                let key = &o.properties[prop as usize].0;
                if key[pos as usize] == b {
                    let phase = if pos as usize + 1 == key.len() {
                        ObjPhase::Colon(prop)
                    } else {
                        ObjPhase::Key { prop, pos: pos + 1 }
                    };
                    out.push(&stack[..n - 1], &[frame(seen, phase, 0)]);
                }
            }
            ObjPhase::Colon(slot) if b == b':' => {
                let value = self.slot_node(o, slot);
                let frames = [
                    frame(seen, ObjPhase::Member(slot), 0),
                    Frame::Value { node: value, ws: 0 },
                ];
                out.push(&stack[..n - 1], &frames);
            }
            ObjPhase::After if b == b',' && more_keys => {
                out.push(&stack[..n - 1], &[frame(seen, ObjPhase::Comma, 0)]);
            }
            _ => {}
        }
    }

    fn slot_node(&self, o: &Object, slot: u8) -> NodeId {
        if slot == EXTRA {
            o.additional
                .expect("an additional key only where they are allowed")
        } else {
            o.properties[slot as usize].1
        }
    }

    /// The top frame's value is complete: it leaves the stack, and its parent moves on
    /// (then takes `then`, the byte that ended a number, if any).
    fn pop(&self, stack: &mut Vec<Frame>, then: Option<u8>, out: &mut StateSet) {
        let n = stack.len();
        if n == 1 {
            // The root value is complete; nothing may follow it.
            if then.is_none() {
                out.push(&[], &[]);
            }
            return;
        }
        let parent = stack[n - 2];
        let moved = match parent {
            Frame::Object {
                node,
                seen,
                phase: ObjPhase::Member(slot),
                ..
            } => Frame::Object {
                node,
                seen: if slot == EXTRA {
                    seen
                } else {
                    seen | 1 << slot
                },
                phase: ObjPhase::After,
                ws: 0,
            },
            Frame::Object {
                node,
                seen,
                phase: ObjPhase::ExtraKey,
                ..
            } => Frame::Object {
                node,
                seen,
                phase: ObjPhase::Colon(EXTRA),
                ws: 0,
            },
            Frame::Array {
                node,
                count,
                phase: ArrPhase::Member,
                ..
            } => Frame::Array {
                node,
                count: count + 1,
                phase: ArrPhase::After,
                ws: 0,
            },
            other => unreachable!("{other:?} has no child value"),
        };
        match then {
            None => out.push(&stack[..n - 2], &[moved]),
            Some(b) => {
                let top = stack.pop().expect("n > 1");
                stack[n - 2] = moved;
                self.feed(stack, b, out);
                stack[n - 2] = parent;
                stack.push(top);
            }
        }
    }

    /// Bytes still needed to complete the value from `stack` by the shortest route the
    /// grammar allows (each of them a one-byte token, which every supported vocabulary has).
    pub fn cost(&self, stack: &[Frame]) -> u32 {
        let len = &self.schema.min_len;
        let mut total = 0u32;
        for f in stack {
            let c = match *f {
                Frame::Value { node, .. } => len[node as usize],
                Frame::Literal { lit, pos } => {
                    self.schema.literals[lit as usize].len() as u32 - pos
                }
                Frame::Str(s) => {
                    let pending = match s.esc {
                        Esc::None => 0,
                        Esc::Backslash => 1,
                        Esc::Hex { left, .. } => u32::from(left),
                        Esc::Utf8 { left, .. } => u32::from(left),
                    };
                    let done = s.chars + u32::from(pending > 0);
                    // An additional key that spells a declared name needs one more byte.
                    let key = u32::from(s.key_of.is_some());
                    pending + s.min.saturating_sub(done) + 1 + key
                }
                Frame::Number { phase, .. } => u32::from(!phase.can_end()),
                Frame::Object {
                    node, seen, phase, ..
                } => self.object_cost(node, seen, phase),
                Frame::Array {
                    node, count, phase, ..
                } => {
                    let (items, min, _) = self.array(node);
                    let item = len[items as usize];
                    let rest = |count: u32| min.saturating_sub(count).saturating_mul(item + 1) + 1;
                    match phase {
                        ArrPhase::Open if min == 0 => 1,
                        ArrPhase::Open => min * (item + 1),
                        ArrPhase::Member => rest(count + 1),
                        ArrPhase::After => rest(count),
                        ArrPhase::Comma => item + rest(count + 1),
                    }
                }
            };
            total = total.saturating_add(c);
        }
        total
    }

    fn object_cost(&self, node: NodeId, seen: u64, phase: ObjPhase) -> u32 {
        let o = self.object(node);
        let len = &self.schema.min_len;
        let bit = |slot: u8| if slot == EXTRA { 0 } else { 1u64 << slot };
        let after = |seen: u64| required_cost(o, len, o.required & !seen, true) + 1;
        let value = |slot: u8| len[self.slot_node(o, slot) as usize];
        match phase {
            ObjPhase::Open => required_cost(o, len, o.required & !seen, false) + 1,
            ObjPhase::Key { prop, pos } => {
                let key = o.properties[prop as usize].0.len() as u32 - u32::from(pos);
                key + 1 + value(prop) + after(seen | bit(prop))
            }
            ObjPhase::Colon(slot) => 1 + value(slot) + after(seen | bit(slot)),
            ObjPhase::Member(slot) => after(seen | bit(slot)),
            ObjPhase::ExtraKey => 1 + value(EXTRA) + after(seen),
            ObjPhase::After => after(seen),
            ObjPhase::Comma => {
                let missing = o.required & !seen;
                if missing != 0 {
                    return required_cost(o, len, missing, false) + 1;
                }
                // Some key must follow the comma: the cheapest one left.
                let declared = (0..o.properties.len())
                    .filter(|&i| seen & (1 << i) == 0)
                    .map(|i| required_cost(o, len, 1 << i, false));
                // `"x":` and the value (a one-character key: the empty one may be declared).
                let extra = o.additional.map(|a| 5 + len[a as usize]);
                declared.chain(extra).min().unwrap_or(u32::MAX / 4) + 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Whether `text` is a prefix of the schema's language, and whether it is complete.
    fn run(schema: &Value, text: &[u8]) -> (bool, bool) {
        let schema = Schema::compile(schema).unwrap();
        let m = Matcher::new(&schema);
        let mut states = m.start();
        let mut next = StateSet::default();
        let mut scratch = Vec::new();
        for &b in text {
            next.clear();
            m.step(&states, b, &mut next, &mut scratch);
            std::mem::swap(&mut states, &mut next);
            if states.is_empty() {
                return (false, false);
            }
        }
        (true, states.iter().any(is_complete))
    }

    fn accepts(schema: &Value, text: &str) -> bool {
        run(schema, text.as_bytes()) == (true, true)
    }

    #[test]
    fn numbers() {
        let num = json!({"type": "number"});
        for ok in [
            "0",
            "-0",
            "-0.5e+3",
            "12.25",
            "1E9",
            "3e-2",
            "123456789012345",
        ] {
            assert!(accepts(&num, ok), "{ok}");
        }
        for bad in [
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "1.5.2",
            "--1",
            "1234567890123456",
        ] {
            assert!(!accepts(&num, bad), "{bad}");
        }
        // A prefix that may still become a number is alive but not complete.
        assert_eq!(run(&num, b"-0."), (true, false));
        let int = json!({"type": "integer"});
        assert!(accepts(&int, "-42"));
        assert!(!accepts(&int, "4.2"));
        assert!(!accepts(&int, "4e2"));
        assert!(!accepts(&int, "00"));
    }

    #[test]
    fn strings_escapes_and_unicode() {
        let s = json!({"type": "string"});
        for ok in [
            r#""""#,
            r#""a b""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u00e9\uD7FF""#,
            "\"caf\u{e9} \u{1F600} \u{20AC}\"",
        ] {
            assert!(accepts(&s, ok), "{ok}");
        }
        for bad in [
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\uDFFF\"",
            "\"a\nb\"",
            "\"a\"b",
            "\"a\" ",
        ] {
            assert!(!accepts(&s, bad), "{bad:?}");
        }
        // Invalid UTF-8: overlong, surrogate, stray continuation, beyond U+10FFFF.
        for bad in [
            &b"\"\xC0\xAF\""[..],
            b"\"\xED\xA0\x80\"",
            b"\"\x80\"",
            b"\"\xF4\x90\x80\x80\"",
            b"\"\xE0\x80\x80\"",
        ] {
            assert_eq!(run(&s, bad), (false, false), "{bad:?}");
        }
        let bounded = json!({"type": "string", "minLength": 2, "maxLength": 3});
        assert!(!accepts(&bounded, r#""a""#));
        assert!(accepts(&bounded, r#""\u00e9b""#));
        assert!(accepts(&bounded, "\"\u{e9}\u{e9}\u{e9}\""));
        assert!(!accepts(&bounded, r#""abcd""#));
    }

    #[test]
    fn objects_keys_and_whitespace() {
        let s = json!({
            "type": "object",
            "properties": {"entity": {"type": "string"}, "action": {"enum": ["on", "off"]}},
            "required": ["entity", "action"],
            "additionalProperties": false
        });
        assert!(accepts(&s, r#"{"entity":"light.kitchen","action":"off"}"#));
        assert!(accepts(&s, "{ \"action\" : \"on\",\n\"entity\": \"x\"}"));
        assert!(!accepts(&s, r#"{"entity":"x"}"#), "required");
        assert!(!accepts(&s, r#"{"entity":"x","action":"dim"}"#), "enum");
        assert!(!accepts(&s, r#"{"entity":"x","action":"on","other":1}"#));
        assert!(!accepts(&s, r#"{"entity":"x","entity":"y","action":"on"}"#));
        assert!(
            !accepts(&s, "{   \"entity\":\"x\",\"action\":\"on\"}"),
            "3 spaces"
        );
        assert!(!accepts(&s, r#"{"entity":"x","action":"on",}"#));
        let open = json!({"type": "object", "properties": {"a": {"type": "integer"}},
            "additionalProperties": {"type": "boolean"}});
        assert!(accepts(&open, r#"{"b":true,"a":1}"#));
        assert!(
            !accepts(&open, r#"{"a":true}"#),
            "a declared key takes its own schema"
        );
        assert!(!accepts(&open, r#"{"b":1}"#));
        assert!(
            !accepts(&open, r#"{"\u0062":true}"#),
            "no escapes in extra keys"
        );
        let any_object = json!({"type": "object"});
        assert!(accepts(&any_object, r#"{"x":[1,{"y":null}],"z":"w"}"#));
        assert!(accepts(&any_object, "{}"));
    }

    #[test]
    fn arrays_any_of_and_literals() {
        let s = json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "minItems": 1, "maxItems": 2});
        assert!(accepts(&s, "[1,null]"));
        assert!(accepts(&s, "[ 7 ]"));
        assert!(!accepts(&s, "[]"));
        assert!(!accepts(&s, "[1,2,3]"));
        assert!(!accepts(&s, "[1,]"));
        let e = json!({"enum": ["a", 1, null, true, {"k": [1]}]});
        for ok in [r#""a""#, "1", "null", "true", r#"{"k":[1]}"#] {
            assert!(accepts(&e, ok), "{ok}");
        }
        assert!(!accepts(&e, "false"));
        assert!(!accepts(&e, "10"));
        let any = json!({});
        for ok in ["null", "-1.5", r#"[{"a":[]},"x",false]"#] {
            assert!(accepts(&any, ok), "{ok}");
        }
        // Nesting is bounded.
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(run(&any, deep.as_bytes()), (false, false));
    }

    #[test]
    fn cost_is_the_length_of_a_shortest_completion() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a", "b"]
        }))
        .unwrap();
        let m = Matcher::new(&s);
        let mut states = m.start();
        let mut next = StateSet::default();
        let mut scratch = Vec::new();
        // {"a":"","b":0}
        assert_eq!(m.cost(states.get(0)), 14);
        for (i, &b) in br#"{"a":"xy"#.iter().enumerate() {
            next.clear();
            m.step(&states, b, &mut next, &mut scratch);
            std::mem::swap(&mut states, &mut next);
            let cost = states.iter().map(|s| m.cost(s)).min().unwrap();
            let done = [13, 12, 11, 10, 9, 8, 8, 8][i];
            assert_eq!(cost, done, "after {} bytes", i + 1);
        }
    }
}
