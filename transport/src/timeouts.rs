//! Every timeout tern applies passes through [`scaled`], so that a slow
//! environment (the soft-dirty test tier runs under software emulation)
//! can stretch them all with one setting:
//! `TERN_TIMEOUT_SCALE=10`. Unset, or not a number >= 1, means 1.

use std::sync::OnceLock;
use std::time::Duration;

/// The factor from `TERN_TIMEOUT_SCALE`, read once.
pub fn scale() -> u32 {
    static SCALE: OnceLock<u32> = OnceLock::new();
    *SCALE.get_or_init(|| std::env::var("TERN_TIMEOUT_SCALE").ok().and_then(|v| v.parse().ok()).filter(|v| *v >= 1).unwrap_or(1))
}

/// `d` times the scale.
pub fn scaled(d: Duration) -> Duration {
    d * scale()
}
