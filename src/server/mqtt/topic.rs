//! Which topics the daemon may publish to. A publish whose topic the broker refuses makes it
//! drop the connection, and rumqttc sends the same publish again after every reconnect: one
//! bad `reply_to` would keep the daemon off the broker for good. So every topic is checked
//! here, before it reaches rumqttc, by the rules brokers apply (MQTT 5 §1.5.4, §4.7), and a
//! reply topic must also lie under one of the configured prefixes.

use std::fmt;

/// Longest topic MQTT can frame, in bytes.
pub const MAX_TOPIC_BYTES: usize = 65535;

/// Why a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// A character brokers refuse in a UTF-8 string: U+0000, C0/C1 controls, DEL or a
    /// noncharacter; `at` is its byte offset.
    BadChar {
        ch: char,
        at: usize,
    },
    /// `+` or `#`: only subscriptions may have them.
    Wildcard {
        at: usize,
    },
    /// A `/` in what must be one level.
    Separator {
        at: usize,
    },
    /// `$...` topics belong to the broker (`$SYS/...`).
    Reserved,
    /// Not under any of `mqtt.reply_prefixes`.
    NotPermitted,
    /// One of the daemon's own request or status topics.
    Own,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "the topic is empty"),
            TopicError::TooLong { len, max } => {
                write!(f, "the topic has {len} bytes; the limit is {max}")
            }
            TopicError::BadChar { ch, at } => write!(
                f,
                "the topic has the character U+{:04X} at byte {at} (control characters and \
                 noncharacters are not allowed)",
                u32::from(*ch)
            ),
            TopicError::Wildcard { at } => {
                write!(f, "the topic has a wildcard (+ or #) at byte {at}")
            }
            TopicError::Separator { at } => {
                write!(f, "a topic level must not contain '/' (at byte {at})")
            }
            TopicError::Reserved => write!(f, "topics starting with $ belong to the broker"),
            TopicError::NotPermitted => {
                write!(f, "the topic is not under any of mqtt.reply_prefixes")
            }
            TopicError::Own => write!(f, "the topic is one of the daemon's own topics"),
        }
    }
}

impl std::error::Error for TopicError {}

/// A character a broker refuses in a topic (or any UTF-8 string of the protocol).
fn is_forbidden_char(c: char) -> bool {
    let n = u32::from(c);
    c.is_control() // U+0000..U+001F, U+007F..U+009F
        || (0xFDD0..=0xFDEF).contains(&n)
        || n & 0xFFFE == 0xFFFE // U+FFFE, U+FFFF and their twins in every plane
}

/// The first forbidden character of `s` and its byte offset.
fn forbidden_char(s: &str) -> Option<(char, usize)> {
    s.char_indices()
        .find(|&(_, c)| is_forbidden_char(c))
        .map(|(at, c)| (c, at))
}

/// A topic name (not a filter) that any broker accepts in a PUBLISH, at most `max` bytes.
pub fn check_name(t: &str, max: usize) -> Result<(), TopicError> {
    if t.is_empty() {
        return Err(TopicError::Empty);
    }
    if t.len() > max {
        return Err(TopicError::TooLong { len: t.len(), max });
    }
    if let Some((ch, at)) = forbidden_char(t) {
        return Err(TopicError::BadChar { ch, at });
    }
    if let Some(at) = t.find(['+', '#']) {
        return Err(TopicError::Wildcard { at });
    }
    if t.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// One level of a topic the daemon builds from its config (base topic, node, group).
pub fn check_level(s: &str) -> Result<(), TopicError> {
    if let Some(at) = s.find('/') {
        return Err(TopicError::Separator { at });
    }
    check_name(s, MAX_TOPIC_BYTES)
}

/// Where replies may go: under one of the prefixes, never onto the daemon's own topics.
#[derive(Debug, Clone)]
pub struct ReplyPolicy {
    /// Each ends with `/`: a topic matches when it starts with it (so `a/b/` takes `a/b/c`
    /// but neither `a/bc` nor `a/b` itself).
    prefixes: Vec<String>,
    /// The daemon's request and status topics.
    own: Vec<String>,
    max_bytes: usize,
}

impl ReplyPolicy {
    /// `prefixes` as configured (`a/b/` or `a/b`, both meaning "below a/b").
    pub fn new(prefixes: &[String], own: Vec<String>, max_bytes: usize) -> Self {
        let prefixes = prefixes
            .iter()
            .map(|p| format!("{}/", p.trim_end_matches('/')))
            .collect();
        ReplyPolicy {
            prefixes,
            own,
            max_bytes,
        }
    }

    /// Whether the daemon may publish replies to `t`.
    pub fn permit(&self, t: &str) -> Result<(), TopicError> {
        check_name(t, self.max_bytes)?;
        if self.own.iter().any(|o| o == t) {
            return Err(TopicError::Own);
        }
        let under = |p: &String| t.len() > p.len() && t.starts_with(p.as_str());
        if !self.prefixes.iter().any(under) {
            return Err(TopicError::NotPermitted);
        }
        Ok(())
    }
}

/// A configured reply prefix: a topic without wildcards, `$` or empty levels, with an
/// optional trailing `/`.
pub fn check_prefix(p: &str) -> Result<(), TopicError> {
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    check_name(trimmed, MAX_TOPIC_BYTES)?;
    match trimmed.split('/').position(str::is_empty) {
        Some(_) => Err(TopicError::Empty),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_brokers_refuse_are_refused() {
        let ok = [
            "a",
            "bitnetd/reply/x",
            "café/ü",
            "a b",
            "a//b",
            "/lead",
            "€/𝄞",
        ];
        for t in ok {
            assert_eq!(check_name(t, MAX_TOPIC_BYTES), Ok(()), "{t:?}");
        }
        let bad = [
            ("", TopicError::Empty),
            ("a\0b", TopicError::BadChar { ch: '\0', at: 1 }),
            ("a\u{1}", TopicError::BadChar { ch: '\u{1}', at: 1 }),
            (
                "\u{1f}",
                TopicError::BadChar {
                    ch: '\u{1f}',
                    at: 0,
                },
            ),
            (
                "a\u{7f}",
                TopicError::BadChar {
                    ch: '\u{7f}',
                    at: 1,
                },
            ),
            (
                "a\u{85}",
                TopicError::BadChar {
                    ch: '\u{85}',
                    at: 1,
                },
            ),
            (
                "a\u{9f}",
                TopicError::BadChar {
                    ch: '\u{9f}',
                    at: 1,
                },
            ),
            (
                "a\u{fffe}",
                TopicError::BadChar {
                    ch: '\u{fffe}',
                    at: 1,
                },
            ),
            (
                "\u{ffff}",
                TopicError::BadChar {
                    ch: '\u{ffff}',
                    at: 0,
                },
            ),
            (
                "x\u{fdd0}",
                TopicError::BadChar {
                    ch: '\u{fdd0}',
                    at: 1,
                },
            ),
            (
                "\u{fdef}",
                TopicError::BadChar {
                    ch: '\u{fdef}',
                    at: 0,
                },
            ),
            (
                "\u{1fffe}",
                TopicError::BadChar {
                    ch: '\u{1fffe}',
                    at: 0,
                },
            ),
            (
                "\u{10ffff}",
                TopicError::BadChar {
                    ch: '\u{10ffff}',
                    at: 0,
                },
            ),
            ("a/+/b", TopicError::Wildcard { at: 2 }),
            ("a/#", TopicError::Wildcard { at: 2 }),
            ("$SYS/broker", TopicError::Reserved),
            ("$share/g/t", TopicError::Reserved),
        ];
        for (t, e) in bad {
            assert_eq!(check_name(t, MAX_TOPIC_BYTES), Err(e), "{t:?}");
        }
        // Neighbours of the refused ranges pass.
        for t in ["\u{a0}", "\u{fdcf}", "\u{fdf0}", "\u{fffd}", "\u{1fffd}"] {
            assert_eq!(check_name(t, MAX_TOPIC_BYTES), Ok(()), "{t:?}");
        }
        let long = "a".repeat(65536);
        assert_eq!(
            check_name(&long, MAX_TOPIC_BYTES),
            Err(TopicError::TooLong {
                len: 65536,
                max: 65535
            })
        );
        assert!(check_name(&long[..65535], MAX_TOPIC_BYTES).is_ok());
        assert!(check_name("abcd", 3).is_err());
    }

    #[test]
    fn replies_go_only_below_a_prefix_on_a_level_boundary() {
        let own = vec!["b/n1/request".into(), "b/n1/status".into()];
        let p = ReplyPolicy::new(&["b/reply/".into(), "home/dev".into()], own, 100);
        for t in ["b/reply/x", "b/reply/x/y", "home/dev/r", "b/reply//"] {
            assert_eq!(p.permit(t), Ok(()), "{t:?}");
        }
        for t in [
            "b/reply",
            "b/reply/",
            "b/replyx/y",
            "home/devices/x",
            "home/dev",
            "home/garage/door/set",
            "other/b/reply/x",
        ] {
            assert_eq!(p.permit(t), Err(TopicError::NotPermitted), "{t:?}");
        }
        assert_eq!(
            p.permit("b/reply/a\u{1}"),
            Err(TopicError::BadChar { ch: '\u{1}', at: 9 })
        );
        assert!(p.permit(&format!("b/reply/{}", "x".repeat(100))).is_err());
        // The daemon's own topics stay out even under a wide prefix.
        let own = vec!["b/n1/request".into()];
        let wide = ReplyPolicy::new(&["b".into()], own, 100);
        assert_eq!(wide.permit("b/n1/request"), Err(TopicError::Own));
        assert_eq!(wide.permit("b/n1/reply"), Ok(()));
    }

    #[test]
    fn prefixes_and_levels_are_checked() {
        for p in ["b/reply/", "b/reply", "a"] {
            assert_eq!(check_prefix(p), Ok(()), "{p:?}");
        }
        for p in ["", "/", "a//b/", "a/+/", "#", "$SYS/", "a\u{1}/"] {
            assert!(check_prefix(p).is_err(), "{p:?}");
        }
        assert!(check_level("pi-1.lan").is_ok());
        for l in ["", "a/b", "a+", "\u{85}", "$x"] {
            assert!(check_level(l).is_err(), "{l:?}");
        }
    }
}
