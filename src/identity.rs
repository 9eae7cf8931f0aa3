//! Stub of the identity interface (replaced by the verification engine branch).
#![allow(missing_docs, unreachable_pub, clippy::unused_async)]
use std::time::Duration;
pub struct Options {
    pub plc_url: String,
    pub allow_private_addresses: bool,
    pub timeout: Duration,
}
#[derive(Clone, Debug)]
pub struct Resolver;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct Error;
impl Error {
    pub fn is_definitive(&self) -> bool {
        false
    }
}
pub struct RecordCopy {
    pub uri: String,
    pub cid: Option<String>,
    pub value: serde_json::Value,
}
pub struct RepoStatus {
    pub active: bool,
    pub status: Option<String>,
}
impl Resolver {
    pub fn new(_o: Options, _dns: crate::dns::Resolver) -> Result<Resolver, Error> {
        Ok(Resolver)
    }
    pub async fn get_record(
        &self,
        _d: &str,
        _c: &str,
        _r: &str,
    ) -> Result<Option<RecordCopy>, Error> {
        Err(Error)
    }
    pub async fn repo_status(&self, _d: &str) -> Result<RepoStatus, Error> {
        Err(Error)
    }
    pub fn forget(&self, _did: &str) {}
}
