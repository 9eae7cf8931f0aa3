//! Integration tests: one binary (`autotests = false`), one module per area, shared helpers in
//! `common/`. Everything runs for real on 127.0.0.1: SQLite files in temp dirs, an in-process
//! authoritative DNS server, a Jetstream fake speaking the v1 wire format, PLC/PDS fakes, and
//! the labeler's own HTTP and WebSocket endpoints.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod browser;
mod cli;
mod common;
mod console;
mod crash;
mod dns;
mod health;
mod hostile;
mod identity;
mod jetstream;
mod lexicons;
mod lifecycle;
mod limits;
mod mirror;
mod operator;
mod pipeline;
mod query_labels;
mod restart;
mod scheduler;
mod server;
mod subscribe_labels;
mod vectors;
mod verify;
