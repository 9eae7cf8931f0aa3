//! How to fix a failing check: the DNS record to publish, as data on the check itself.
//!
//! A report carries its fixes so every view of it (getVerification, checkDomain, the console
//! page, `labeler check --json`) says the same thing: one report shape, rendered twice, never
//! advice rebuilt from reason strings. A fix is given only for a *failing* check whose remedy
//! is a DNS record at a name the checks know; "could not decide" is not the operator's to fix,
//! and a malformed attestation (no selector, a bad domain) is fixed in the record, which the
//! reason already names.
//!
//! The values are the smallest record that passes the rule each check enforces (see the
//! check's own module and `docs/verification.md`): where part of the value is the operator's
//! own (a DKIM public key, a mail host), the value holds a `<…>` placeholder and `note` says
//! what goes there.

use serde::{Deserialize, Serialize};

use super::CheckName;

/// A DNS record that makes a failing check pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// The owner name (`_dmarc.example.com`), no trailing dot.
    pub name: String,
    /// The record type (`TXT`, `MX`).
    #[serde(rename = "type")]
    pub rtype: String,
    /// The record's value as it is published (for TXT, the text without quotes).
    pub value: String,
    /// What else to know: what replaces a placeholder, which records to remove.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

impl Fix {
    fn new(name: String, rtype: &str, value: String, note: Option<String>) -> Fix {
        Fix {
            name,
            rtype: rtype.to_owned(),
            value,
            note,
        }
    }

    /// The record in zone-file order: `_dmarc.example.com TXT "v=DMARC1; p=quarantine"`.
    pub fn render(&self) -> String {
        if self.rtype == "TXT" {
            format!("{} TXT {:?}", self.name, self.value)
        } else {
            format!("{} {} {}", self.name, self.rtype, self.value)
        }
    }
}

/// The fix for a failing `name` check (`subject`: the DKIM selector) of `did`'s attestation
/// of `domain`; `relay` is the configured relay SPF include. `None` when no DNS record fixes
/// it (the record check, a DKIM entry about the declared selectors rather than a key).
pub(crate) fn for_check(
    name: CheckName,
    subject: Option<&str>,
    did: &str,
    domain: &str,
    relay: Option<&str>,
) -> Option<Fix> {
    Some(match name {
        // atproto handle spec, DNS TXT method: exactly one `did=` value at `_atproto`.
        CheckName::DomainControl => Fix::new(
            format!("_atproto.{domain}"),
            "TXT",
            format!("did={did}"),
            Some("remove any other did= TXT value at this name: it must name exactly one DID".to_owned()),
        ),
        // RFC 5321 §5.1: an explicit MX naming a host with a public address.
        CheckName::Mx => Fix::new(
            domain.to_owned(),
            "MX",
            format!("10 <mail host, e.g. mx1.{domain}>."),
            Some("name the host that receives your mail; it needs a public A or AAAA record, and a null MX (0 .) must go".to_owned()),
        ),
        // RFC 7208: one v=spf1 record ending in -all, authorising only your own senders.
        CheckName::Spf => Fix::new(
            domain.to_owned(),
            "TXT",
            "v=spf1 mx -all".to_owned(),
            Some("this authorises your MX hosts only: add ip4:, ip6: or include: for every other server that sends your mail, and keep exactly one v=spf1 record".to_owned()),
        ),
        // RFC 6376 §3.6.1, RFC 8301 §3.2: one key record per selector, RSA ≥ 1024 (2048 advised).
        CheckName::Dkim => {
            let selector = subject?;
            Fix::new(
                format!("{selector}._domainkey.{domain}"),
                "TXT",
                "v=DKIM1; k=rsa; p=<public key, base64>".to_owned(),
                Some(format!(
                    "the public half of the key your mail server signs with as selector {selector} (RSA of 2048 bits, or k=ed25519); exactly one such record"
                )),
            )
        }
        // RFC 7489 §6.3: an enforced policy at 100%.
        CheckName::Dmarc => Fix::new(
            format!("_dmarc.{domain}"),
            "TXT",
            "v=DMARC1; p=quarantine".to_owned(),
            Some("p=reject passes too; pct must be 100 (the default) and t=y must not be set; keep exactly one v=DMARC1 record".to_owned()),
        ),
        CheckName::RelayMember => {
            let relay = relay?;
            Fix::new(
                domain.to_owned(),
                "TXT",
                format!("v=spf1 mx include:{relay} -all"),
                Some("add include:".to_owned() + relay + " to your one SPF record, keeping what it already authorises"),
            )
        }
        CheckName::Record => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_name_the_exact_record_to_publish() {
        let dmarc = for_check(CheckName::Dmarc, None, "did:plc:x", "example.com", None).unwrap();
        assert_eq!(
            dmarc.render(),
            r#"_dmarc.example.com TXT "v=DMARC1; p=quarantine""#
        );
        let dc = for_check(
            CheckName::DomainControl,
            None,
            "did:plc:x",
            "example.com",
            None,
        )
        .unwrap();
        assert_eq!(dc.render(), r#"_atproto.example.com TXT "did=did:plc:x""#);
        let dkim = for_check(CheckName::Dkim, Some("s1"), "d", "example.com", None).unwrap();
        assert_eq!(dkim.name, "s1._domainkey.example.com");
        assert!(for_check(CheckName::Dkim, None, "d", "example.com", None).is_none());
        assert!(for_check(CheckName::RelayMember, None, "d", "example.com", None).is_none());
        let relay = for_check(
            CheckName::RelayMember,
            None,
            "d",
            "example.com",
            Some("relay.test"),
        )
        .unwrap();
        assert!(relay.value.contains("include:relay.test"));
        assert!(for_check(CheckName::Record, None, "d", "example.com", None).is_none());
        let json = serde_json::to_value(&dmarc).unwrap();
        assert_eq!(json["type"], "TXT");
        assert_eq!(json["name"], "_dmarc.example.com");
    }
}
