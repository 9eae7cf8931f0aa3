//! SPF (RFC 7208): the record's syntax, and an audit of the whole include/redirect tree for
//! policies that let arbitrary hosts pass.
//!
//! This does not evaluate SPF for a client address; it walks the tree the way `check_host()`
//! would for an address that matches nothing, and judges what it finds.
//!
//! - Record selection (RFC 7208 §4.5): TXT records that begin with `v=spf1` (case-insensitive)
//!   followed by a space or the end; leading whitespace disqualifies. None → fail; more than
//!   one → fail (permerror).
//! - Syntax (RFC 7208 §4.6.1, §5, §6, §7, §12): unknown mechanisms, malformed arguments
//!   (`ip4:1.2.3.4~all`), bad CIDR lengths and a repeated `redirect`/`exp` are permerrors;
//!   unknown modifiers are ignored (§6). Records must be printable ASCII.
//! - Limits (RFC 7208 §4.6.4): at most 10 DNS-querying terms (`include`, `a`, `mx`, `ptr`,
//!   `exists`, `redirect`) across the whole tree; at most 2 void lookups (NXDOMAIN or no
//!   records); at most 10 MX records for an `mx` term. Loops are reported as such.
//! - Permissiveness (`docs/verification.md` §1): `+all` or a bare `all`; a pass-qualified `ip4` range
//!   wider than /8 ([`IP4_MIN_PREFIX`]) or `ip6` wider than /24 ([`IP6_MIN_PREFIX`]); a total
//!   pass-qualified space of at least a /8 (2^24 IPv4 addresses) or a /24 of IPv6; `a`/`mx`
//!   with such a short CIDR (e.g. `a/0`); `exists:` without a macro (its answer does not depend
//!   on the sender). These propagate through pass-qualified `include:` (RFC 7208 §5.2: an
//!   include matches when the included record passes) and through `redirect=` (§6.1).
//! - The ending of the top record (or of the record its redirect chain ends at) must be
//!   `-all` or `~all`: `?all` and "no `all` and no `redirect`" (neutral, §4.7) fail. Inside an
//!   included record these only mean "no match", which is harmless, so they are not judged
//!   there. Terms after the first `all` are never evaluated, and `redirect` is ignored when an
//!   `all` is present (§5.1, §6.1).
//! - `include:`/`redirect=` targets that use macros cannot be audited and fail.
//! - A DNS error anywhere never fails the check: the affected part is unknown, further queries
//!   are skipped, and the result is "could not decide" unless a problem found independently of
//!   the error already fails it. A missing include or redirect target (NXDOMAIN or no SPF
//!   record) is a permerror (§5.2, §6.1).
//! - Relay membership: a pass-qualified `include:<relay>` reached through pass-qualified
//!   includes and redirects.

mod record;
mod walk;

#[cfg(fuzzing)]
pub(crate) use record::parse;
pub(crate) use walk::{Audit, audit};

/// Most DNS-querying terms in the whole tree (RFC 7208 §4.6.4).
pub(crate) const MAX_LOOKUPS: u32 = 10;
/// Most void lookups (RFC 7208 §4.6.4).
pub(crate) const MAX_VOID_LOOKUPS: u32 = 2;
/// Most MX records an `mx` term may return (RFC 7208 §4.6.4).
pub(crate) const MAX_MX: usize = 10;
/// A pass-qualified `ip4` (or `a`/`mx` IPv4 CIDR) shorter than this is too wide.
pub(crate) const IP4_MIN_PREFIX: u8 = 8;
/// A pass-qualified `ip6` (or `a`/`mx` IPv6 CIDR) shorter than this is too wide.
pub(crate) const IP6_MIN_PREFIX: u8 = 24;
/// Total pass-qualified IPv4 addresses that count as too wide (a /8).
pub(crate) const MAX_IP4_SPACE: u128 = 1 << 24;
/// Total pass-qualified IPv6 addresses that count as too wide (a /24).
pub(crate) const MAX_IP6_SPACE: u128 = 1 << 104;
