//! The SPF record itself: selection among TXT records (RFC 7208 §4.5) and the syntax of its
//! terms, mechanisms, modifiers and macro-strings (§4.6.1, §5, §6, §7, §12). Pure: no DNS.

use std::net::{Ipv4Addr, Ipv6Addr};

/// SPF qualifiers (RFC 7208 §4.6.2). A missing qualifier is `+`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qualifier {
    /// `+`
    Pass,
    /// `-`
    Fail,
    /// `~`
    SoftFail,
    /// `?`
    Neutral,
}

/// A `domain-spec` (RFC 7208 §7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DomainSpec {
    /// As written.
    pub(crate) text: String,
    /// Whether it contains `%{…}` macros (then it cannot be queried without a sender).
    pub(crate) has_macros: bool,
}

impl DomainSpec {
    /// The name to query (lowercase, no trailing dot) when there are no macros.
    pub(crate) fn name(&self) -> Option<String> {
        (!self.has_macros).then(|| {
            self.text
                .strip_suffix('.')
                .unwrap_or(&self.text)
                .to_ascii_lowercase()
        })
    }
}

/// SPF mechanisms (RFC 7208 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
    /// `all`
    All,
    /// `include:<domain-spec>`
    Include(DomainSpec),
    /// `a[:domain][/v4][//v6]`
    A(Option<DomainSpec>, Option<u8>, Option<u8>),
    /// `mx[:domain][/v4][//v6]`
    Mx(Option<DomainSpec>, Option<u8>, Option<u8>),
    /// `ptr[:domain]`
    Ptr(Option<DomainSpec>),
    /// `ip4:<addr>[/len]`
    Ip4(Ipv4Addr, u8),
    /// `ip6:<addr>[/len]`
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`
    Exists(DomainSpec),
}

/// A qualified mechanism, with its text for reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Directive {
    pub(crate) qualifier: Qualifier,
    pub(crate) mechanism: Mechanism,
    /// The term as written.
    pub(crate) text: String,
}

/// A parsed SPF record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpfRecord {
    /// Mechanisms in order.
    pub(crate) directives: Vec<Directive>,
    /// `redirect=`
    pub(crate) redirect: Option<DomainSpec>,
    /// `exp=`
    pub(crate) exp: Option<DomainSpec>,
}

/// True if the TXT record is an SPF record: `v=spf1` (any case) then a space or the end
/// (RFC 7208 §4.5).
pub(crate) fn is_spf_record(record: &[u8]) -> bool {
    record.len() >= 6
        && record[..6].eq_ignore_ascii_case(b"v=spf1")
        && matches!(record.get(6), None | Some(b' '))
}

/// Parses an SPF record. The error is a phrase that fits after "is invalid: ".
pub(crate) fn parse(record: &[u8]) -> Result<SpfRecord, String> {
    if !is_spf_record(record) {
        return Err("it does not start with \"v=spf1\"".to_owned());
    }
    if let Some(b) = record.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
        return Err(format!(
            "it contains the byte 0x{b:02x}; SPF records are printable ASCII separated by spaces"
        ));
    }
    // Checked above: every byte is printable ASCII.
    let text = std::str::from_utf8(&record[6..]).map_err(|_| "not ASCII".to_owned())?;
    let mut out = SpfRecord::default();
    for term in text.split(' ').filter(|t| !t.is_empty()) {
        parse_term(term, &mut out).map_err(|e| format!("{:?}: {e}", clip(term)))?;
    }
    Ok(out)
}

fn parse_term(term: &str, out: &mut SpfRecord) -> Result<(), String> {
    // Modifier: name "=" value, name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ) (§12).
    let name_len = term
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(term.len());
    if name_len > 0
        && term.as_bytes()[0].is_ascii_alphabetic()
        && term.as_bytes().get(name_len) == Some(&b'=')
    {
        let name = term[..name_len].to_ascii_lowercase();
        let value = &term[name_len + 1..];
        match name.as_str() {
            "redirect" => {
                if out.redirect.is_some() {
                    return Err("\"redirect\" appears more than once (RFC 7208 §6)".to_owned());
                }
                out.redirect = Some(domain_spec(value)?);
            }
            "exp" => {
                if out.exp.is_some() {
                    return Err("\"exp\" appears more than once (RFC 7208 §6)".to_owned());
                }
                out.exp = Some(domain_spec(value)?);
            }
            // Unknown modifiers MUST be ignored (§6), but must be well-formed (§4.6.1).
            _ => {
                macro_string(value, true)?;
            }
        }
        return Ok(());
    }
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let mech_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let (name, arg) = rest.split_at(mech_len);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "all" => return Err("\"all\" takes no argument".to_owned()),
        "include" => Mechanism::Include(required_domain(arg)?),
        "exists" => Mechanism::Exists(required_domain(arg)?),
        "a" => {
            let (d, v4, v6) = dual_cidr(arg)?;
            Mechanism::A(d, v4, v6)
        }
        "mx" => {
            let (d, v4, v6) = dual_cidr(arg)?;
            Mechanism::Mx(d, v4, v6)
        }
        "ptr" => Mechanism::Ptr(optional_domain(arg)?),
        "ip4" => {
            let (addr, len) = network(arg, 32)?;
            let addr: Ipv4Addr = addr
                .parse()
                .map_err(|_| format!("{:?} is not an IPv4 address", clip(addr)))?;
            Mechanism::Ip4(addr, len.unwrap_or(32))
        }
        "ip6" => {
            let (addr, len) = network(arg, 128)?;
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("{:?} is not an IPv6 address", clip(addr)))?;
            Mechanism::Ip6(addr, len.unwrap_or(128))
        }
        "" => return Err("not a mechanism or modifier".to_owned()),
        other => return Err(format!("unknown mechanism {:?}", clip(other))),
    };
    out.directives.push(Directive {
        qualifier,
        mechanism,
        text: term.to_owned(),
    });
    Ok(())
}

/// `":" addr ["/" len]` for ip4/ip6.
fn network(arg: &str, max: u8) -> Result<(&str, Option<u8>), String> {
    let arg = arg
        .strip_prefix(':')
        .ok_or("an address is required after ':'")?;
    match arg.split_once('/') {
        Some((addr, len)) => Ok((addr, Some(cidr(len, max)?))),
        None => Ok((arg, None)),
    }
}

/// A CIDR length: `"0" / %x31-39 0*nDIGIT` within 0..=max (RFC 7208 §5.6).
fn cidr(s: &str, max: u8) -> Result<u8, String> {
    let ok = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|b| b.is_ascii_digit())
        && !(s.len() > 1 && s.starts_with('0'));
    match s.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => Err(format!(
            "{:?} is not a CIDR length between 0 and {max}",
            clip(s)
        )),
    }
}

/// The optional domain and the IPv4 and IPv6 CIDR lengths of `a` and `mx`.
type DualCidr = (Option<DomainSpec>, Option<u8>, Option<u8>);

/// `[":" domain-spec] [ "/" ip4-cidr ] [ "//" ip6-cidr ]` for a and mx.
fn dual_cidr(arg: &str) -> Result<DualCidr, String> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut rest = arg;
    let mut v6 = None;
    if let Some(i) = rest.rfind("//")
        && all_digits(&rest[i + 2..])
    {
        v6 = Some(cidr(&rest[i + 2..], 128)?);
        rest = &rest[..i];
    }
    let mut v4 = None;
    if let Some(i) = rest.rfind('/')
        && all_digits(&rest[i + 1..])
    {
        v4 = Some(cidr(&rest[i + 1..], 32)?);
        rest = &rest[..i];
    }
    Ok((optional_domain(rest)?, v4, v6))
}

fn required_domain(arg: &str) -> Result<DomainSpec, String> {
    match arg.strip_prefix(':') {
        Some(spec) => domain_spec(spec),
        None => Err("a domain is required after ':'".to_owned()),
    }
}

fn optional_domain(arg: &str) -> Result<Option<DomainSpec>, String> {
    if arg.is_empty() {
        return Ok(None);
    }
    required_domain(arg).map(Some)
}

/// `domain-spec = macro-string domain-end` (RFC 7208 §7.1). Without macros it must be a
/// name we can query: letters, digits, `-`, `_`, dots, ≥2 labels, a top label with a letter.
fn domain_spec(s: &str) -> Result<DomainSpec, String> {
    if s.is_empty() {
        return Err("empty domain".to_owned());
    }
    let has_macros = macro_string(s, false)?;
    if !has_macros {
        let name = s.strip_suffix('.').unwrap_or(s);
        let labels: Vec<&str> = name.split('.').collect();
        let valid = name.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            && labels.last().is_some_and(|top| {
                top.bytes().any(|b| b.is_ascii_alphabetic())
                    && !top.starts_with('-')
                    && !top.ends_with('-')
                    && !top.contains('_')
            });
        if !valid {
            return Err(format!("{:?} is not a valid domain name", clip(s)));
        }
    }
    Ok(DomainSpec {
        text: s.to_owned(),
        has_macros,
    })
}

/// Checks a macro-string (RFC 7208 §7.1); returns whether it has `%{…}` expansions.
/// `explanation` allows the `c`, `r` and `t` letters (only valid in `exp` strings).
fn macro_string(s: &str, explanation: bool) -> Result<bool, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut has_macros = false;
    while i < b.len() {
        if b[i] != b'%' {
            if !(0x21..=0x7e).contains(&b[i]) {
                return Err("invalid character".to_owned());
            }
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%' | b'_' | b'-') => i += 2,
            Some(b'{') => {
                let close = b[i..]
                    .iter()
                    .position(|c| *c == b'}')
                    .ok_or("unterminated macro")?;
                let body = &b[i + 2..i + close];
                let (&letter, mut rest) = body.split_first().ok_or("empty macro")?;
                let letters: &[u8] = if explanation {
                    b"slodiphcrtv"
                } else {
                    b"slodiphv"
                };
                if !letters.contains(&letter.to_ascii_lowercase()) {
                    return Err(format!("invalid macro letter {:?}", char::from(letter)));
                }
                while let Some((d, r)) = rest.split_first() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    rest = r;
                }
                if let Some((b'r' | b'R', r)) = rest.split_first() {
                    rest = r;
                }
                if !rest.iter().all(|c| b".-+,/_=".contains(c)) {
                    return Err("invalid macro transformer or delimiter".to_owned());
                }
                has_macros = true;
                i += close + 1;
            }
            _ => return Err("a '%' that does not start a macro".to_owned()),
        }
    }
    Ok(has_macros)
}

fn clip(s: &str) -> String {
    crate::verify::tags::clip(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_str(s: &str) -> Result<SpfRecord, String> {
        parse(s.as_bytes())
    }

    #[test]
    fn selects_records_by_version() {
        assert!(is_spf_record(b"v=spf1 -all"));
        assert!(is_spf_record(b"V=SPF1 -all"));
        assert!(is_spf_record(b"v=spf1"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b" v=spf1 -all"));
        assert!(!is_spf_record(b"v=spf1\t-all"));
        assert!(!is_spf_record(b"spf1"));
    }

    #[test]
    fn parses_terms() {
        let r = parse_str(
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx:mail.example.test/24//64 ptr include:_spf.example.test exists:%{i}._e.example.test ~all ra=postmaster",
        )
        .unwrap();
        assert_eq!(r.directives.len(), 8);
        assert_eq!(
            r.directives[0].mechanism,
            Mechanism::Ip4("192.0.2.0".parse().unwrap(), 24)
        );
        assert!(
            matches!(&r.directives[3].mechanism, Mechanism::Mx(Some(d), Some(24), Some(64)) if d.text == "mail.example.test")
        );
        assert!(matches!(&r.directives[6].mechanism, Mechanism::Exists(d) if d.has_macros));
        assert_eq!(r.directives[7].qualifier, Qualifier::SoftFail);
        let r = parse_str("v=spf1 redirect=_spf.example.test exp=explain.example.test").unwrap();
        assert!(r.redirect.is_some() && r.exp.is_some());
        assert!(parse_str("v=spf1  a/24  -all ").is_ok());
        assert!(parse_str("v=spf1 A:Example.TEST -ALL").is_ok());
    }

    #[test]
    fn rejects_syntax_errors() {
        for bad in [
            "v=spf1 ip4:1.2.3.4~all",
            "v=spf1 foo -all",
            "v=spf1 ip4:1.2.3.4/33 -all",
            "v=spf1 ip4:1.2.3.4/024 -all",
            "v=spf1 ip4:1.2.3 -all",
            "v=spf1 ip6:zz::/64 -all",
            "v=spf1 ip6:2001:db8::/129 -all",
            "v=spf1 include -all",
            "v=spf1 include:localhost -all",
            "v=spf1 include:example.123 -all",
            "v=spf1 include:a..b.test -all",
            "v=spf1 redirect=a.test redirect=b.test",
            "v=spf1 exp=a.test exp=b.test -all",
            "v=spf1 -all:x",
            "v=spf1 +-all",
            "v=spf1 exists:%{x}.test -all",
            "v=spf1 include:%{d -all",
            "v=spf1 include:50%.test -all",
            "v=spf1 -all\t",
            "v=spf1 a:é.test -all",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
        // Unknown modifiers are ignored (RFC 7208 §6).
        assert!(parse_str("v=spf1 ra=abuse rp=10 rr=e:f -all").is_ok());
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse(s.as_bytes());
            let _ = parse(format!("v=spf1 {s}").as_bytes());
        }

        #[test]
        fn parser_never_panics_on_term_soup(
            terms in proptest::collection::vec(
                "[-+~?]?(all|include|a|mx|ptr|ip4|ip6|exists|redirect|exp|x)[:=/]?[a-z0-9.%{}:/_-]{0,20}",
                0..12,
            )
        ) {
            let _ = parse(format!("v=spf1 {}", terms.join(" ")).as_bytes());
        }
    }
}
