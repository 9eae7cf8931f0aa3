//! Tag=value lists: the syntax of DKIM key records (RFC 6376 §3.2) and DMARC records
//! (RFC 7489 §6.4).
//!
//! ```text
//! tag-list  =  tag-spec *( ";" tag-spec ) [ ";" ]
//! tag-spec  =  [FWS] tag-name [FWS] "=" [FWS] tag-value [FWS]
//! tag-name  =  ALPHA *ALNUMPUNC          ; ALNUMPUNC = ALPHA / DIGIT / "_"
//! tag-value =  [ tval *( 1*(WSP / FWS) tval ) ]
//! tval      =  1*VALCHAR                 ; VALCHAR = %x21-3A / %x3C-7E
//! ```
//!
//! "Tags with duplicate names MUST NOT occur within a single tag-list; if a tag name does
//! occur more than once, the entire tag-list is invalid" (RFC 6376 §3.2). DMARC uses the same
//! shape with WSP only (`dmarc-sep = *WSP ";" *WSP`) and case-insensitive tag names (ABNF
//! quoted strings), so duplicates are found case-insensitively there. An empty tag-spec
//! (`;;`) is invalid; whitespace after the optional final `;` is tolerated.

use std::fmt;

/// Which flavour of tag list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// RFC 6376: FWS (space, tab, CR, LF) around tokens; tag names case-sensitive.
    Dkim,
    /// RFC 7489: WSP (space, tab) only; tag names case-insensitive.
    Dmarc,
}

impl Flavour {
    fn is_space(self, c: char) -> bool {
        match self {
            Flavour::Dkim => matches!(c, ' ' | '\t' | '\r' | '\n'),
            Flavour::Dmarc => matches!(c, ' ' | '\t'),
        }
    }
}

/// One `name=value` pair; both trimmed of surrounding whitespace. The value keeps inner
/// whitespace (DKIM `p=` may be folded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tag<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: &'a str,
}

/// Why a tag list is invalid. `Display` is a phrase that fits after "is invalid: ".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TagError {
    /// The record is empty or only whitespace.
    Empty,
    /// A non-ASCII or control character.
    BadByte,
    /// `;;` or `;` at the start.
    EmptySpec(usize),
    /// A tag-spec without `=`.
    NoEquals(String),
    /// A tag name that is not `ALPHA *(ALPHA / DIGIT / "_")`.
    BadName(String),
    /// A value with a character outside VALCHAR.
    BadValue(String),
    /// The same tag twice.
    Duplicate(String),
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::Empty => write!(f, "the record is empty"),
            TagError::BadByte => write!(f, "it contains a non-ASCII or control character"),
            TagError::EmptySpec(n) => write!(f, "tag {n} is empty (\";;\" or a leading \";\")"),
            TagError::NoEquals(s) => write!(f, "{s:?} is not a tag=value pair"),
            TagError::BadName(s) => write!(f, "{s:?} is not a valid tag name"),
            TagError::BadValue(s) => {
                write!(f, "the value of tag {s:?} contains an invalid character")
            }
            TagError::Duplicate(s) => write!(f, "tag {s:?} appears more than once"),
        }
    }
}

/// Parses a tag list. Never panics; linear in the input.
pub(crate) fn parse(record: &str, flavour: Flavour) -> Result<Vec<Tag<'_>>, TagError> {
    if record
        .chars()
        .any(|c| !c.is_ascii() || (c.is_ascii_control() && !flavour.is_space(c)))
    {
        return Err(TagError::BadByte);
    }
    let is_space = |c: char| flavour.is_space(c);
    if record.trim_matches(is_space).is_empty() {
        return Err(TagError::Empty);
    }
    let specs: Vec<&str> = record.split(';').collect();
    let last = specs.len() - 1;
    let mut tags: Vec<Tag<'_>> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.trim_matches(is_space);
        if spec.is_empty() {
            if i == last && i > 0 {
                break; // optional final ";" (plus whitespace)
            }
            return Err(TagError::EmptySpec(i + 1));
        }
        let Some((name, value)) = spec.split_once('=') else {
            return Err(TagError::NoEquals(clip(spec)));
        };
        let name = name.trim_matches(is_space);
        let value = value.trim_matches(is_space);
        let mut chars = name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(TagError::BadName(clip(name)));
        }
        if !value
            .chars()
            .all(|c| is_space(c) || (('\x21'..='\x7e').contains(&c) && c != ';'))
        {
            return Err(TagError::BadValue(clip(name)));
        }
        let duplicate = tags.iter().any(|t| match flavour {
            Flavour::Dkim => t.name == name,
            Flavour::Dmarc => t.name.eq_ignore_ascii_case(name),
        });
        if duplicate {
            return Err(TagError::Duplicate(clip(name)));
        }
        tags.push(Tag { name, value });
    }
    Ok(tags)
}

/// The value of tag `name` (exact match for DKIM, case-insensitive for DMARC).
pub(crate) fn get<'a>(tags: &[Tag<'a>], name: &str, flavour: Flavour) -> Option<&'a str> {
    tags.iter()
        .find(|t| match flavour {
            Flavour::Dkim => t.name == name,
            Flavour::Dmarc => t.name.eq_ignore_ascii_case(name),
        })
        .map(|t| t.value)
}

/// At most 40 characters of `s`, for quoting hostile input in reasons.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_with_whitespace_and_trailing_semicolon() {
        let tags = parse(" v = DKIM1 ;\tk=rsa; p = MIIB AQAB ; ", Flavour::Dkim).unwrap();
        assert_eq!(
            tags,
            vec![
                Tag {
                    name: "v",
                    value: "DKIM1"
                },
                Tag {
                    name: "k",
                    value: "rsa"
                },
                Tag {
                    name: "p",
                    value: "MIIB AQAB"
                },
            ]
        );
        assert_eq!(parse("p=", Flavour::Dkim).unwrap()[0].value, "");
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(parse("", Flavour::Dkim), Err(TagError::Empty));
        assert_eq!(parse("  ", Flavour::Dmarc), Err(TagError::Empty));
        assert_eq!(
            parse("v=1;;p=x", Flavour::Dkim),
            Err(TagError::EmptySpec(2))
        );
        assert_eq!(parse(";p=x", Flavour::Dkim), Err(TagError::EmptySpec(1)));
        assert!(matches!(
            parse("v=1; p", Flavour::Dkim),
            Err(TagError::NoEquals(_))
        ));
        assert!(matches!(
            parse("1v=1", Flavour::Dkim),
            Err(TagError::BadName(_))
        ));
        assert!(matches!(
            parse("v-x=1", Flavour::Dkim),
            Err(TagError::BadName(_))
        ));
        assert!(matches!(
            parse("v=é", Flavour::Dkim),
            Err(TagError::BadByte)
        ));
        assert!(matches!(
            parse("v=a\x01", Flavour::Dkim),
            Err(TagError::BadByte)
        ));
        assert!(matches!(
            parse("p=a; p=b", Flavour::Dkim),
            Err(TagError::Duplicate(_))
        ));
        // DKIM names are case-sensitive, DMARC names are not.
        assert!(parse("p=a; P=b", Flavour::Dkim).is_ok());
        assert!(matches!(
            parse("p=a; P=b", Flavour::Dmarc),
            Err(TagError::Duplicate(_))
        ));
        // DMARC does not allow CR/LF as whitespace.
        assert!(parse("v=DMARC1;\r\np=reject", Flavour::Dmarc).is_err());
        assert!(parse("v=DKIM1;\r\n p=abc", Flavour::Dkim).is_ok());
    }

    #[test]
    fn tags_are_looked_up_by_name_with_each_flavours_case_rule() {
        let tags = parse("V=DMARC1; P=reject", Flavour::Dmarc).unwrap();
        assert_eq!(get(&tags, "p", Flavour::Dmarc), Some("reject"));
        assert_eq!(get(&tags, "p", Flavour::Dkim), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s, Flavour::Dkim);
            let _ = parse(&s, Flavour::Dmarc);
        }

        #[test]
        fn never_panics_on_tag_like_input(s in "[a-zA-Z0-9_=; \t\r\n/+]{0,120}") {
            if let Ok(tags) = parse(&s, Flavour::Dkim) {
                for t in tags {
                    prop_assert!(!t.name.is_empty());
                    prop_assert!(!t.value.contains(';'));
                }
            }
        }
    }
}
