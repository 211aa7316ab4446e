//! How memory is moved: the migration modes, which the messages carry
//! ([`crate::message`]), the compatibility rules check ([`crate::compat`])
//! and the state machines follow ([`crate::state`],
//! [`crate::source_state`]).

use serde::{Deserialize, Serialize};

/// How memory is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Invalid,
    /// Freeze, dump everything, copy, restore.
    StopAndCopy,
    /// Iterative pre-copy: rounds of soft-dirty pre-dumps (each holding only
    /// the pages written since the previous one) shipped while the container
    /// runs, then a freeze for a final dump of what changed since the last
    /// round. Needs soft-dirty tracking on both hosts.
    PreCopy,
    /// Content-addressed pre-copy, for kernels without soft-dirty: one full
    /// dump that leaves the container running is shipped first; at the
    /// freeze only the pages whose blake3 hash the target does not already
    /// hold cross the wire.
    HashPreCopy,
    /// Post-copy: freeze, dump everything but memory, restore on the target
    /// at once; the target pulls the memory from the frozen source over the
    /// agents' link, on demand and in the background, until it is whole.
    /// The downtime no longer grows with memory, but until the last page
    /// crosses the container needs both hosts and the link between them.
    PostCopy,
}

impl Mode {
    /// The name users and `--json` see.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Invalid => "invalid",
            Mode::StopAndCopy => "stop-and-copy",
            Mode::PreCopy => "pre-copy",
            Mode::HashPreCopy => "hash-pre-copy",
            Mode::PostCopy => "post-copy",
        }
    }

    /// Whether memory is shipped in rounds before the freeze.
    pub fn has_rounds(&self) -> bool {
        matches!(self, Mode::PreCopy | Mode::HashPreCopy)
    }
}

/// What a post-copy migration sends before its freeze, so that the fill
/// after the restore carries less. The coordinator chooses it
/// ([`crate::MigrateOptions::post_copy_first`]); other modes ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PostCopyFirst {
    /// Nothing: every page crosses after the restore.
    #[default]
    Nothing,
    /// Soft-dirty rounds while the container runs (where both hosts track
    /// soft-dirty memory): the lazy dump sits on the last one, and only
    /// the pages written since are filled in.
    SoftDirtyRounds,
    /// `hash-pre-copy`'s base: one full checkpoint while the container
    /// runs, cut into pages on the target. During the fill, a page the
    /// base holds crosses as its number in the base, not its bytes.
    HashBase,
}
