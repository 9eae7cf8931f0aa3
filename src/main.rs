//! The `labeler` binary. Not yet wired.
fn main() {}
