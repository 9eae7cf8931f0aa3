//! Stub of the verification interface (replaced by the verification engine branch).
#![allow(missing_docs, unreachable_pub, clippy::unused_async)]
pub struct Options {
    pub relay_spf_include: Option<String>,
}
#[derive(Clone, Debug)]
pub struct Checker;
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub did: String,
    pub domain: String,
    pub checked_at: String,
    pub verdict: Outcome,
    pub checks: Vec<Check>,
}
impl Report {
    pub fn relay_member(&self) -> bool {
        false
    }
    pub fn render_text(&self) -> String {
        String::new()
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    CouldNotDecide,
}
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: CheckName,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    pub outcome: Outcome,
    pub reason: String,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    Record,
    DomainControl,
    Mx,
    Spf,
    Dkim,
    Dmarc,
    RelayMember,
}
impl Checker {
    pub fn new(_d: crate::dns::Resolver, _i: crate::identity::Resolver, _o: Options) -> Checker {
        Checker
    }
    pub async fn check(&self, did: &str, domain: &str, _s: &[String], _fresh: bool) -> Report {
        Report {
            did: did.into(),
            domain: domain.into(),
            checked_at: crate::label::now_cts(),
            verdict: Outcome::CouldNotDecide,
            checks: vec![],
        }
    }
}
