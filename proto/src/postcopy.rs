//! The operator's say over a post-copy fill (`tern post-copy`), as a
//! policy without IO: the source agent's tunnel asks it what an action
//! means for the fill as it stands.
//!
//! While the link to the target is lost, the container waits there,
//! paused, for its pages; its source keeps them, frozen, and tries the
//! link again, every second at first, then (once it has waited
//! [`STALL_AFTER`]) every few seconds, until the operator decides. Only
//! then are two choices left, and the agent never makes the second by
//! itself: the target's copy may have run for a while before the link
//! dropped, and what it did there would be lost.
//!
//! | link    | `Resume`            | `GiveUp`                                      |
//! |---------|---------------------|-----------------------------------------------|
//! | up      | refused: it runs    | refused: it runs (the pages are crossing)      |
//! | lost    | try again now       | end the dump: the source's copy runs again     |
//! | stalled | try again now       | the same                                       |

use crate::message::{FillLink, PostCopyAction};
use std::time::Duration;

/// How long the source tries the link every second before it reports the
/// fill stalled and tries less often (the agent's default:
/// `[limits] post_copy_wait_secs`).
pub const STALL_AFTER: Duration = Duration::from_secs(600);
/// How often a stalled fill's source tries the link again.
pub const STALLED_RETRY: Duration = Duration::from_secs(5);
/// How often a lost fill's source tries the link again, before the stall.
pub const LOST_RETRY: Duration = Duration::from_secs(1);

/// What the tunnel does on an operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: only the status was asked.
    Report,
    /// Try the link again now, without waiting for the next try.
    RetryNow,
    /// End the dump: CRIU lets the source's copy run again.
    GiveUp,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{container}'s memory is crossing to {target} now: there is nothing to resume, and giving up would throw away what it did there (`tern post-copy` shows the fill)")]
    LinkUp { container: String, target: String },
    #[error("no action was asked")]
    Invalid,
}

/// What `action` means for a fill whose link stands as `link`.
pub fn decide(link: &FillLink, action: PostCopyAction, container: &str, target: &str) -> Result<Decision, Refused> {
    let lost = matches!(link, FillLink::Lost { .. } | FillLink::Stalled { .. });
    match action {
        PostCopyAction::Status => Ok(Decision::Report),
        PostCopyAction::Resume | PostCopyAction::GiveUp if !lost => {
            Err(Refused::LinkUp { container: container.to_string(), target: target.to_string() })
        }
        PostCopyAction::Resume => Ok(Decision::RetryNow),
        PostCopyAction::GiveUp => Ok(Decision::GiveUp),
        PostCopyAction::Invalid => Err(Refused::Invalid),
    }
}

/// The link's state after a try failed, and the wait before the next:
/// `lost_for` since the link was lost (`since_unix`), stalled past `wait`.
pub fn after_failed_try(lost_for: Duration, wait: Duration, since_unix: u64, error: String) -> (FillLink, Duration) {
    if lost_for >= wait {
        (FillLink::Stalled { since_unix, error }, STALLED_RETRY)
    } else {
        (FillLink::Lost { since_unix, error }, LOST_RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> FillLink {
        FillLink::Lost { since_unix: 1, error: "timed out".into() }
    }

    #[test]
    fn the_operator_acts_only_on_a_lost_link() {
        for action in [PostCopyAction::Resume, PostCopyAction::GiveUp] {
            let e = decide(&FillLink::Up, action, "db", "b").unwrap_err();
            assert!(e.to_string().contains("crossing to b"), "{e}");
        }
        assert_eq!(decide(&FillLink::Up, PostCopyAction::Status, "db", "b"), Ok(Decision::Report));
        let stalled = FillLink::Stalled { since_unix: 1, error: "x".into() };
        for link in [lost(), stalled] {
            assert_eq!(decide(&link, PostCopyAction::Resume, "db", "b"), Ok(Decision::RetryNow));
            assert_eq!(decide(&link, PostCopyAction::GiveUp, "db", "b"), Ok(Decision::GiveUp));
            assert_eq!(decide(&link, PostCopyAction::Status, "db", "b"), Ok(Decision::Report));
        }
        assert_eq!(decide(&lost(), PostCopyAction::Invalid, "db", "b"), Err(Refused::Invalid));
    }

    #[test]
    fn a_lost_link_stalls_after_the_wait_and_is_tried_less_often() {
        let (link, wait) = after_failed_try(Duration::from_secs(3), STALL_AFTER, 7, "e".into());
        assert_eq!((link, wait), (FillLink::Lost { since_unix: 7, error: "e".into() }, LOST_RETRY));
        let (link, wait) = after_failed_try(STALL_AFTER, STALL_AFTER, 7, "e".into());
        assert_eq!((link, wait), (FillLink::Stalled { since_unix: 7, error: "e".into() }, STALLED_RETRY));
    }
}
