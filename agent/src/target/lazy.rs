//! Lazy restores: the container resumes before its memory is copied in.
//!
//! CRIU's restore copies every page of the container's memory into place
//! before the processes resume, so that copy grows the downtime with the
//! container's memory. With `lazy-pages`, CRIU registers the memory with
//! userfaultfd and resumes at once; a `criu lazy-pages` daemon
//! ([`crate::criu::Criu::lazy_pages`]) then fills it, page faults first and
//! the rest in the background, from the images this host already holds (no
//! network involved).
//!
//! Podman cannot ask for it, but runc reads CRIU options from the file the
//! container's `org.criu.config` annotation names (else `/etc/criu/runc.conf`,
//! for every container on the host). So the target points that annotation,
//! in the `spec.dump` it unpacks (`unpack.rs`), at [`CONF`] in the
//! container's own folder, which says `lazy-pages` only during the restore
//! and is a link to `/etc/criu/runc.conf` ever after: later checkpoints and
//! restores of the container behave as if the annotation were not there.
//!
//! ```text
//!  unpack: spec.dump += org.criu.config=<folder>/tern-criu.conf
//!  restore: tern-criu.conf = runc.conf + "lazy-pages"
//!           criu lazy-pages --images-dir <folder>/checkpoint --work-dir <folder> &
//!           podman container restore --import ...      (CRIU connects to the daemon)
//!           tern-criu.conf -> /etc/criu/runc.conf      (the container runs)
//!           the daemon exits once every page is in place: only then does the
//!           target answer Restored, so the source keeps its checkpoint until
//!           the container's memory is whole here
//! ```

use std::path::Path;

/// The CRIU options file of a container migrated in, in its folder.
pub const CONF: &str = "tern-criu.conf";
/// The annotation runc reads the CRIU options file's path from.
pub const ANNOTATION: &str = crate::engine::CRIU_OPTIONS_ANNOTATION;
/// runc's host-wide CRIU options, used when a container has no annotation.
const RUNC_CONF: &str = "/etc/criu/runc.conf";

/// Whether `spec.dump`'s annotations may be pointed at [`CONF`]: when they
/// name no options file, or one of tern's (a container migrated before).
/// A file of the user's own is left alone, and the restore is not lazy.
pub fn may_annotate(existing: Option<&str>) -> bool {
    existing.is_none_or(|p| Path::new(p).file_name().is_some_and(|f| f == CONF))
}

/// Points `spec`'s (JSON of `spec.dump`) options file at `conf`: always
/// when it names one of tern's (a container migrated before, from another
/// host's folder), and when it names none only if `add`. `None` when the
/// spec is left as it is: it does not parse, names a file of the user's, or
/// names none and `add` is false.
pub fn annotate(spec: &[u8], conf: &Path, add: bool) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(spec).ok()?;
    let obj = v.as_object_mut()?;
    if !add && obj.get("annotations").and_then(|a| a.get(ANNOTATION)).is_none() {
        return None;
    }
    let ann = obj.entry("annotations").or_insert_with(|| serde_json::json!({}));
    let ann = ann.as_object_mut()?;
    if !may_annotate(ann.get(ANNOTATION).and_then(|a| a.as_str())) {
        return None;
    }
    ann.insert(ANNOTATION.into(), serde_json::Value::String(conf.to_str()?.to_string()));
    serde_json::to_vec(&v).ok()
}

/// Writes the container's options file: the host's runc options, plus
/// `lazy-pages` when `lazy`, plus an action script CRIU runs at each stage
/// of the restore (`netid::Hold::unlock_script`) when there is one.
pub fn write_conf(folder: &Path, lazy: bool, action_script: Option<&Path>) -> std::io::Result<()> {
    let path = folder.join(CONF);
    let _ = std::fs::remove_file(&path);
    let mut text = std::fs::read_to_string(RUNC_CONF).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if lazy || action_script.is_some() {
        text.push_str("# tern: this restore only (agent/src/target/lazy.rs)\n");
    }
    if lazy {
        text.push_str("lazy-pages\n");
    }
    if let Some(script) = action_script {
        text.push_str(&format!("action-script {}\n", script.display()));
    }
    std::fs::write(path, text)
}

/// Turns the options file into a link to the host's: from now on the
/// container's checkpoints and restores read what the others read.
pub fn settle_conf(folder: &Path) {
    let path = folder.join(CONF);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return;
    }
    let tmp = folder.join(format!("{CONF}.link"));
    let _ = std::fs::remove_file(&tmp);
    let r = std::os::unix::fs::symlink(RUNC_CONF, &tmp).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        tracing::error!("cannot link {} to {RUNC_CONF}: {e}; remove `lazy-pages` from it by hand", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotates_a_spec_without_options_or_with_terns() {
        let conf = Path::new("/s/overlay-containers/abc/userdata/tern-criu.conf");
        let out = annotate(br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#, conf, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["annotations"][ANNOTATION], conf.to_str().unwrap());
        assert_eq!(v["process"]["args"][0], "sh", "the rest is kept");
        // Migrated before, from a host with another storage root: ours, re-pointed.
        let again = annotate(br#"{"annotations":{"org.criu.config":"/other/x/tern-criu.conf","k":"v"}}"#, conf, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(v["annotations"][ANNOTATION], conf.to_str().unwrap());
        assert_eq!(v["annotations"]["k"], "v");
    }

    #[test]
    fn leaves_the_users_options_file_and_bad_specs_alone() {
        let conf = Path::new("/c/tern-criu.conf");
        assert!(annotate(br#"{"annotations":{"org.criu.config":"/etc/mine.conf"}}"#, conf, true).is_none());
        assert!(annotate(b"not json", conf, true).is_none());
        assert!(annotate(b"[1,2]", conf, true).is_none());
        assert!(annotate(br#"{"annotations":7}"#, conf, true).is_none());
        // Not asked to add one, and none there: untouched.
        assert!(annotate(br#"{"annotations":{"k":"v"}}"#, conf, false).is_none());
        assert!(may_annotate(None) && may_annotate(Some("/a/b/tern-criu.conf")) && !may_annotate(Some("")));
    }

    #[test]
    fn the_options_file_says_lazy_only_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        write_conf(dir.path(), true, Some(Path::new("/x/tern-criu-action.sh"))).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CONF)).unwrap();
        assert!(text.contains("\nlazy-pages\n") && text.contains("\naction-script /x/tern-criu-action.sh\n"), "{text}");
        settle_conf(dir.path());
        assert_eq!(std::fs::read_link(dir.path().join(CONF)).unwrap(), Path::new(RUNC_CONF));
        settle_conf(dir.path());
        write_conf(dir.path(), false, None).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CONF)).unwrap();
        assert!(!text.contains("lazy-pages") && !text.contains("action-script"), "{text}");
    }
}
