//! atmos-labeler: the trust anchor of Atmosphere Mail.
//!
//! PDS operators publish an `email.atmos.attestation` record naming a mail domain and its DKIM
//! selectors. This daemon follows those records through Jetstream, confirms each one at its
//! author's PDS, checks the domain's DNS (domain control, MX, SPF, DKIM, DMARC), and publishes
//! signed atproto labels (`verified-mail-operator`, `relay-member`) on the operator's DID through
//! `com.atproto.label.queryLabels` and `com.atproto.label.subscribeLabels`.
//!
//! Data flows one way: [`jetstream`] → [`manager`] → [`store`] → [`server`], with the
//! [`scheduler`] feeding the manager re-checks. [`verify`] is pure policy over answers that
//! [`dns`] and [`identity`] fetch.

pub mod app;
pub mod attestation;
mod cbor;
pub mod cli;
pub mod config;
pub mod dns;
pub mod follow;
pub mod frame;
pub mod health;
pub mod identity;
pub mod jetstream;
pub mod keys;
pub mod label;
pub mod lifecycle;
pub mod manager;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod syntax;
pub mod telemetry;
pub mod verify;
pub(crate) mod wsclient;
