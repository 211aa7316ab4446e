//! The target's side of a migration as a state machine.
//!
//! ```text
//!             Ready{needs_image:true}              ImageSent
//!   Begin ──▶ AwaitingImage ─────────────────────────────────▶ Staging{rounds: 0}
//!     │                                                          │   ▲
//!     └── Ready{needs_image:false} ────────────────────────────▶ │   │ RoundSent{n = rounds+1}
//!                                                                │   │ (pre-copy modes only)
//!                                                                │───┘
//!                  pre-copy: RoundsDone{rounds} ──▶ Prepared{rounds}
//!                                                                │ CheckpointSent (stop-and-copy: from
//!                                                                ▼ Staging{0}; hash-pre-copy: Staging{1})
//!                                             Restored ──Commit──▶ Done
//!   Abort from any state but Done ──▶ Done (everything staged or restored is removed)
//! ```
//!
//! A restored copy is tentative until `Commit`: the source decides, and
//! may still tell this target to drop it. When the conversation ends
//! without either, [`when_source_lost`] says what stays: a restored copy
//! is kept, still tentative, until the source settles it with a `Resolve`
//! request; anything else is removed (the source cannot have committed,
//! and it runs its own copy again only once the target confirmed that
//! none is here).
//!
//! [`step`] only decides whether a message is legal now and what the agent
//! must do about it; the agent does the IO and reports failures itself.

use crate::message::{Digest, SourceMsg};
use crate::mode::Mode;
use crate::plan::{Plan, Rounds};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting for the image archive's digest.
    AwaitingImage,
    /// Taking pre-copy rounds (if the mode has them), then the checkpoint.
    /// `rounds` is how many rounds are stored so far.
    Staging { rounds: u32 },
    /// Soft-dirty pre-copy: the rounds are ready for the restore; waiting
    /// for the checkpoint.
    Prepared { rounds: u32 },
    /// The container runs here; waiting for the source to commit.
    Restored,
    /// Committed or aborted: nothing more is accepted.
    Done,
}

impl TargetState {
    /// The state after answering `Begin`.
    pub fn initial(needs_image: bool) -> Self {
        if needs_image {
            TargetState::AwaitingImage
        } else {
            TargetState::Staging { rounds: 0 }
        }
    }
}

/// What the target agent must do for an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check the image archive against the digest, load it, answer `ImageLoaded`.
    LoadImage(Digest),
    /// Check round `round` against the digest, keep it, answer `RoundStored`.
    StoreRound { round: u32, digest: Digest },
    /// Link the `rounds` stored rounds into the chain the final dump's
    /// `parent` reaches, answer `RoundsPrepared`.
    PrepareRounds { rounds: u32 },
    /// Check the checkpoint archive, restore (on top of the last of `rounds`
    /// stored rounds when there are any), confirm it runs, answer `Restored`.
    Restore { digest: Digest, rounds: u32 },
    /// The restored copy is the container's now: drop its tentative
    /// marker, answer `Committed`.
    Commit,
    /// Remove what was restored or staged, answer `Aborted`.
    Abort(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source sent {message} while this target was in state {state:?} ({mode:?}); the migration is aborted")]
pub struct UnexpectedMessage {
    pub state: TargetState,
    pub mode: Mode,
    pub message: String,
}

fn name(msg: &SourceMsg) -> String {
    match msg {
        SourceMsg::Invalid => "Invalid".into(),
        SourceMsg::ImageSent(_) => "ImageSent".into(),
        SourceMsg::RoundSent { round, .. } => format!("RoundSent({round})"),
        SourceMsg::RoundsDone { rounds } => format!("RoundsDone({rounds})"),
        SourceMsg::CheckpointSent(_) => "CheckpointSent".into(),
        SourceMsg::Commit => "Commit".into(),
        SourceMsg::Abort { .. } => "Abort".into(),
    }
}

/// The next state and the action for `msg` in `state` of a migration
/// following `plan`, or an error naming all three.
pub fn step(plan: Plan, state: TargetState, msg: &SourceMsg) -> Result<(TargetState, Action), UnexpectedMessage> {
    use TargetState::*;
    let mode = plan.mode;
    match (state, msg) {
        (AwaitingImage, SourceMsg::ImageSent(d)) => Ok((Staging { rounds: 0 }, Action::LoadImage(*d))),
        (Staging { rounds }, SourceMsg::RoundSent { round, digest }) if plan.rounds != Rounds::None && *round == rounds + 1 => {
            Ok((Staging { rounds: *round }, Action::StoreRound { round: *round, digest: *digest }))
        }
        (Staging { rounds }, SourceMsg::RoundsDone { rounds: n }) if plan.rounds == Rounds::SoftDirty && *n == rounds && rounds > 0 => {
            Ok((Prepared { rounds }, Action::PrepareRounds { rounds }))
        }
        (Prepared { rounds }, SourceMsg::CheckpointSent(d)) => Ok((Restored, Action::Restore { digest: *d, rounds })),
        // Stop-and-copy has no rounds; content-addressed pre-copy exactly
        // one, its base, which needs no preparing.
        (Staging { rounds: 0 }, SourceMsg::CheckpointSent(d)) if plan.rounds == Rounds::None => {
            Ok((Restored, Action::Restore { digest: *d, rounds: 0 }))
        }
        (Staging { rounds: 1 }, SourceMsg::CheckpointSent(d)) if plan.rounds == Rounds::Base => {
            Ok((Restored, Action::Restore { digest: *d, rounds: 1 }))
        }
        (Restored, SourceMsg::Commit) => Ok((Done, Action::Commit)),
        (AwaitingImage | Staging { .. } | Prepared { .. } | Restored, SourceMsg::Abort { reason }) => Ok((Done, Action::Abort(reason.clone()))),
        (state, msg) => Err(UnexpectedMessage { state, mode, message: name(msg) }),
    }
}

/// What the target keeps when the source's conversation ends (lost,
/// cut, or the source's agent died) before `Commit` or `Abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceLost {
    /// Remove everything this migration staged or restored.
    Undo,
    /// The container runs here: keep it, marked tentative, for the
    /// source's `Resolve`. Removing it could leave no copy running (the
    /// source may have recorded the commit); only the source knows.
    KeepTentative,
}

/// `restored`: a container made by this migration runs here.
pub fn when_source_lost(state: TargetState, restored: bool) -> SourceLost {
    match state {
        TargetState::Restored if restored => SourceLost::KeepTentative,
        _ => SourceLost::Undo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest { bytes: 1, blake3: [7; 32] }
    }

    fn round(n: u32) -> SourceMsg {
        SourceMsg::RoundSent { round: n, digest: digest() }
    }

    #[test]
    fn happy_path_with_image() {
        let m = Plan::for_mode(Mode::StopAndCopy);
        let s = TargetState::initial(true);
        let (s, a) = step(m, s, &SourceMsg::ImageSent(digest())).unwrap();
        assert_eq!(a, Action::LoadImage(digest()));
        let (s, a) = step(m, s, &SourceMsg::CheckpointSent(digest())).unwrap();
        assert_eq!(a, Action::Restore { digest: digest(), rounds: 0 });
        let (s, a) = step(m, s, &SourceMsg::Commit).unwrap();
        assert_eq!((s, a), (TargetState::Done, Action::Commit));
    }

    #[test]
    fn pre_copy_rounds_come_in_order_and_the_restore_knows_how_many() {
        let m = Plan::for_mode(Mode::PreCopy);
        let mut s = TargetState::initial(false);
        for n in 1..=3 {
            let (next, a) = step(m, s, &round(n)).unwrap();
            assert_eq!(a, Action::StoreRound { round: n, digest: digest() });
            s = next;
        }
        // The checkpoint needs the rounds prepared first.
        assert!(step(m, s, &SourceMsg::CheckpointSent(digest())).is_err());
        assert!(step(m, s, &SourceMsg::RoundsDone { rounds: 2 }).is_err(), "the count must match");
        let (s, a) = step(m, s, &SourceMsg::RoundsDone { rounds: 3 }).unwrap();
        assert_eq!(a, Action::PrepareRounds { rounds: 3 });
        assert!(step(m, s, &round(4)).is_err(), "no rounds after RoundsDone");
        let (_, a) = step(m, s, &SourceMsg::CheckpointSent(digest())).unwrap();
        assert_eq!(a, Action::Restore { digest: digest(), rounds: 3 });
        // A round out of order, repeated, or after zero is refused.
        for bad in [0, 2, 5] {
            assert!(step(m, TargetState::Staging { rounds: 0 }, &round(bad)).is_err(), "round {bad}");
        }
        assert!(step(m, TargetState::Staging { rounds: 2 }, &round(2)).is_err());
    }

    #[test]
    fn rounds_are_refused_in_stop_and_copy_and_hash_mode_needs_its_base() {
        let err = step(Plan::for_mode(Mode::StopAndCopy), TargetState::Staging { rounds: 0 }, &round(1)).unwrap_err();
        assert!(err.to_string().contains("RoundSent(1)") && err.to_string().contains("StopAndCopy"), "{err}");
        let h = Plan::for_mode(Mode::HashPreCopy);
        assert!(step(h, TargetState::Staging { rounds: 0 }, &SourceMsg::CheckpointSent(digest())).is_err());
        assert!(step(h, TargetState::Staging { rounds: 1 }, &SourceMsg::CheckpointSent(digest())).is_ok());
        assert!(step(h, TargetState::Staging { rounds: 1 }, &SourceMsg::RoundsDone { rounds: 1 }).is_err());
        let s = Plan::for_mode(Mode::StopAndCopy);
        assert!(step(s, TargetState::Staging { rounds: 0 }, &SourceMsg::RoundsDone { rounds: 0 }).is_err());
    }

    #[test]
    fn post_copy_takes_soft_dirty_rounds_only_when_its_plan_says_so() {
        let plain = Plan::for_mode(Mode::PostCopy);
        assert!(step(plain, TargetState::Staging { rounds: 0 }, &round(1)).is_err());
        assert!(step(plain, TargetState::Staging { rounds: 0 }, &SourceMsg::CheckpointSent(digest())).is_ok());
        let m = Plan::new(Mode::PostCopy, crate::plan::PostCopyFirst::SoftDirtyRounds);
        let (s, _) = step(m, TargetState::Staging { rounds: 0 }, &round(1)).unwrap();
        assert!(step(m, s, &SourceMsg::CheckpointSent(digest())).is_err(), "the rounds must be prepared first");
        let (s, a) = step(m, s, &SourceMsg::RoundsDone { rounds: 1 }).unwrap();
        assert_eq!(a, Action::PrepareRounds { rounds: 1 });
        let (_, a) = step(m, s, &SourceMsg::CheckpointSent(digest())).unwrap();
        assert_eq!(a, Action::Restore { digest: digest(), rounds: 1 });
    }

    #[test]
    fn abort_is_legal_until_done() {
        for s in [TargetState::AwaitingImage, TargetState::Staging { rounds: 2 }, TargetState::Prepared { rounds: 2 }, TargetState::Restored] {
            let (next, a) = step(Plan::for_mode(Mode::PreCopy), s, &SourceMsg::Abort { reason: "x".into() }).unwrap();
            assert_eq!((next, a), (TargetState::Done, Action::Abort("x".into())));
        }
    }

    #[test]
    fn a_lost_source_leaves_only_a_restored_copy_tentative() {
        assert_eq!(when_source_lost(TargetState::Restored, true), SourceLost::KeepTentative);
        // The restore failed: nothing runs here to keep.
        assert_eq!(when_source_lost(TargetState::Restored, false), SourceLost::Undo);
        for s in [TargetState::AwaitingImage, TargetState::Staging { rounds: 1 }, TargetState::Prepared { rounds: 1 }, TargetState::Done] {
            assert_eq!(when_source_lost(s, false), SourceLost::Undo, "{s:?}");
        }
    }

    #[test]
    fn out_of_order_messages_name_the_state() {
        let bad = [
            (TargetState::AwaitingImage, SourceMsg::CheckpointSent(digest())),
            (TargetState::AwaitingImage, SourceMsg::Commit),
            (TargetState::AwaitingImage, round(1)),
            (TargetState::Staging { rounds: 0 }, SourceMsg::ImageSent(digest())),
            (TargetState::Staging { rounds: 0 }, SourceMsg::Commit),
            (TargetState::Restored, SourceMsg::CheckpointSent(digest())),
            (TargetState::Restored, round(1)),
            (TargetState::Done, SourceMsg::Abort { reason: String::new() }),
            (TargetState::Done, SourceMsg::Commit),
            (TargetState::Staging { rounds: 0 }, SourceMsg::Invalid),
        ];
        for (state, msg) in bad {
            let err = step(Plan::for_mode(Mode::PreCopy), state, &msg).unwrap_err();
            assert_eq!(err.state, state);
            assert!(err.to_string().contains(&format!("{state:?}")), "{err}");
        }
    }
}
