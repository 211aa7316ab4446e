//! What a migration's mode means for its course, in one place: both
//! sides ask it (the source's machine, `source_state`, and the target's,
//! `state`), so that they agree on which rounds come before the freeze and
//! what the final archive is.

use crate::message::DataKind;
use crate::mode::Mode;
pub use crate::mode::PostCopyFirst;

/// How rounds are taken before the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// None: stop-and-copy.
    None,
    /// Soft-dirty pre-dumps until the policy says freeze; the final dump
    /// sits on top of the last one.
    SoftDirty,
    /// One full archive taken while the container runs; the final archive
    /// is delta-encoded against it.
    Base,
}

/// What a migration mode means, in one place: both sides ask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub rounds: Rounds,
}

impl Plan {
    pub fn for_mode(mode: Mode) -> Plan {
        Plan::new(mode, PostCopyFirst::Nothing)
    }

    /// Post-copy takes the rounds `first` names before its freeze
    /// ([`PostCopyFirst`]); other modes ignore it.
    pub fn new(mode: Mode, first: PostCopyFirst) -> Plan {
        let rounds = match (mode, first) {
            (Mode::PreCopy, _) | (Mode::PostCopy, PostCopyFirst::SoftDirtyRounds) => Rounds::SoftDirty,
            (Mode::HashPreCopy, _) | (Mode::PostCopy, PostCopyFirst::HashBase) => Rounds::Base,
            (Mode::StopAndCopy | Mode::PostCopy | Mode::Invalid, _) => Rounds::None,
        };
        Plan { mode, rounds }
    }

    /// The data stream that carries round `n`.
    pub fn round_kind(&self, n: u32) -> DataKind {
        match self.rounds {
            Rounds::Base => DataKind::Base,
            _ => DataKind::Round(n),
        }
    }

    /// The data stream that carries the final archive, after `rounds`
    /// rounds. Post-copy's holds no pages (a few hundred KiB): it crosses
    /// as it is, and its base serves the fill instead.
    pub fn final_kind(&self, rounds: u32) -> DataKind {
        match self.rounds {
            Rounds::Base if self.mode != Mode::PostCopy => DataKind::CheckpointDelta { base: rounds },
            _ => DataKind::Checkpoint,
        }
    }

    /// Whether the final dump is Podman's `--with-previous`, on top of the
    /// last round.
    pub fn with_previous(&self) -> bool {
        self.rounds == Rounds::SoftDirty
    }

    /// Whether the checkpoint folder may go to RAM. Soft-dirty pre-copy's
    /// final dump links to rounds on disk, and CRIU cannot follow a link
    /// out of a mount at restore time.
    pub fn checkpoint_in_ram(&self) -> bool {
        self.rounds != Rounds::SoftDirty
    }

    /// What the user reads at the freeze.
    pub fn freeze_note(&self) -> &'static str {
        match self.rounds {
            Rounds::SoftDirty if self.mode == Mode::PostCopy => {
                "freezing; everything but memory crosses now, and after the restore only the pages written since the last round"
            }
            Rounds::SoftDirty => "freezing; the final dump holds only the pages written since the last round",
            Rounds::Base if self.mode == Mode::PostCopy => {
                "freezing; everything but memory crosses now, and after the restore the pages the base lacks"
            }
            Rounds::Base => "freezing; only pages the target lacks cross the wire",
            Rounds::None if self.mode == Mode::PostCopy => "freezing; everything but memory crosses now, memory after the restore",
            Rounds::None => "freezing and dumping; the archive streams as it is written",
        }
    }
}
