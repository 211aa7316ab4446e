//! Protocol version negotiation.
//!
//! Each side sends the version it speaks and the versions it still accepts;
//! the highest version both accept wins. Version 0 is reserved as invalid.

/// The version this build speaks.
/// Version 11 lets post-copy take `hash-pre-copy`'s base first
/// (`MigrateOptions::post_copy_first`, `Begin::post_copy_first`, in place
/// of `post_copy_rounds`). Version 10 adds checkpoints a user keeps (`Request::Checkpoint`,
/// `Request::CheckpointPut`, `Response::Checkpoints`,
/// `Response::RestoredAs`). Version 9 adds the operator's say over post-copy fills
/// (`Request::PostCopy`, `Response::PostCopy`: how each stands, resume,
/// give up). Version 8 adds post-copy (`Mode::PostCopy`, `Request::Pages`: the
/// page tunnel between the target's lazy restore and the source's CRIU).
/// Version 7 marks tickets of evacuation moves (`TicketBody::evacuation`),
/// which a target records to let the evacuated host's evacuator
/// certificate bring them back, and lets a source refuse a `Migrate` in
/// its own stream (`MigrateEvent::Refused`). Version 6 added bandwidth caps (`MigrateOptions::bandwidth`, the cap a
/// move asks of its source; the cap a migration ran under and how long its
/// streams waited for it in the report, `MigrationReport::bandwidth` and
/// `throttled_ms`; the agent's own cap in `HostStatus::bandwidth_cap`),
/// cordons (`Request::Cordon`, `Response::Cordon`), what
/// a host's facts say afresh at every request (`HostFacts::status`: its
/// cordon, available memory and disk), evacuation records
/// (`MigrateRequest::evacuation`, `Request::Evacuation`,
/// `Response::Evacuation`) for `tern return`, the unit that runs a
/// container (`ContainerInfo::systemd_unit`), and the frozen interval's
/// steps in `RestoreInfo` and the report. Version 5 added a container's networks (name, driver, addresses, MAC),
/// published ports, established TCP connections and main process to
/// `ContainerInfo`, and `allow_reset` to `MigrateOptions`. Version 4 added the size of a container's files (root file system
/// changes and volumes) to `ContainerInfo`, which `auto` weighs with its
/// memory, and its named volumes, which must not exist on the target. Version 3 added lazy restores (the user's choice in `MigrateOptions` and
/// `Begin`, the host's ability in its facts, the fill time in `RestoreInfo`
/// and the report) and where the images were held (RAM or disk). Version 2
/// added pre-copy rounds, file sets and delta records. Older versions are no
/// longer spoken: agents of one cluster are upgraded together.
pub const PROTOCOL_VERSION: u16 = 11;

/// Every version this build can still speak, newest first.
pub const SUPPORTED_VERSIONS: &[u16] = &[11];

/// The highest version both sides support, or `None` when they share none.
pub fn negotiate(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter().copied().filter(|v| *v != 0 && theirs.contains(v)).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common_version() {
        assert_eq!(negotiate(&[1, 2, 3], &[2, 3, 4]), Some(3));
        assert_eq!(negotiate(&[1], &[1]), Some(1));
    }

    #[test]
    fn no_common_version_and_zero_never_counts() {
        assert_eq!(negotiate(&[1, 2], &[3]), None);
        assert_eq!(negotiate(&[0], &[0]), None);
        assert_eq!(negotiate(&[], &[1]), None);
    }
}
