//! Admission: what an incoming checkpoint may ask of this host, checked
//! before `podman container restore --import` runs it as root.
//!
//! A checkpoint is the source's word for what the container is: Podman
//! re-creates it from `config.dump` (its container config) and
//! `spec.dump` (the OCI runtime spec runc gets), both in the small archive
//! Podman imports (`rest.tar`, [`super::unpack`]). A source that lies, or
//! one that was taken over, could ask this host for anything root can do:
//! a bind mount of `/`, `CAP_SYS_ADMIN`, the host's network namespace, an
//! OCI hook (a program runc runs as root on the host), a CRIU options file
//! of its choosing. So before the restore the target reads both files from
//! exactly the archive Podman will read and checks:
//!
//! * **identity**: the container's ID, name and image in `config.dump` are
//!   the ones the source announced in `Begin` (what the coordinator
//!   checked and the user asked for);
//! * **policy** ([`AdmissionConfig`], the `[admission]` table of the agent's
//!   config; every default refuses): no privileged container; the
//!   container's own network, PID, IPC, UTS and mount namespaces; no
//!   capability beyond Podman's defaults ([`PODMAN_DEFAULT_CAPS`]); no device
//!   beyond the standard ones ([`STANDARD_DEVICES`]); no OCI hook; bind
//!   mounts only from the container's own folders (Podman's per-container
//!   files: `resolv.conf`, `hosts`, `hostname`, `.containerenv`,
//!   `run/secrets`, `shm`) and its named volumes' folders; no
//!   `org.criu.config` annotation but tern's own ([`super::lazy`]);
//! * **members**: every member of the archive, by its real name (PAX and
//!   GNU long names applied), passes [`super::unpack::check_member`]: no
//!   absolute or `..` name, no hard link, device or FIFO, no link but
//!   CRIU's `checkpoint/parent -> ../pre-checkpoint`.
//!
//! A refusal names the rule, the value and the config key that would allow
//! it; the target answers `Failed` in phase Verify, so the source rolls
//! back and the container runs on there.

use super::unpack::{check_member, MemberKind};
use crate::config::AdmissionConfig;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use tern_proto::facts::ContainerInfo;

/// Podman 4's default capabilities (containers/common's
/// `DefaultCapabilities`, the default of `default_capabilities` in
/// containers.conf since Podman 4.0; 3.x also granted `AUDIT_WRITE`,
/// `MKNOD` and `NET_RAW`: allow those with `allow_capabilities`).
pub const PODMAN_DEFAULT_CAPS: &[&str] =
    &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];

/// Device nodes every container has (runc creates them whatever the spec
/// says), by path and (major, minor).
pub const STANDARD_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
    ("/dev/console", 5, 1),
    ("/dev/ptmx", 5, 2),
];

/// Mount types that bring nothing of the host's files in.
const VIRTUAL_MOUNTS: &[&str] = &["proc", "tmpfs", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// The namespaces a container must have of its own.
const OWN_NAMESPACES: &[&str] = &["network", "pid", "ipc", "uts", "mount"];

/// The largest `config.dump` or `spec.dump` read (they are tens of KiB).
const MAX_DUMP: u64 = 16 << 20;

/// Why a checkpoint is not restored here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The checkpoint is of another container than the one announced.
    #[error("refused: the checkpoint is not the container the source announced: its {what} is {found:?} in config.dump, the source announced {announced:?}")]
    Mismatch { what: &'static str, found: String, announced: String },
    /// The checkpoint cannot be read or lacks what Podman needs.
    #[error("refused: {0}")]
    Unreadable(String),
    /// The policy of this host refuses what the container asks for.
    #[error(
        "refused by this host's admission policy: {rule}: {value} (to allow it, set `{key}` in the [admission] table of the target agent's config)"
    )]
    Policy { rule: &'static str, value: String, key: String },
}

fn policy(rule: &'static str, value: impl Into<String>, key: impl Into<String>) -> Refusal {
    Refusal::Policy { rule, value: value.into(), key: key.into() }
}

/// Where this container's own files are on this host: what its bind
/// mounts may come from without the operator's word.
#[derive(Debug, Clone, Default)]
pub struct HostPaths {
    /// `<graph root>/<driver>-containers/<id>` and `<run root>/<driver>-containers/<id>`.
    pub container_dirs: Vec<PathBuf>,
    /// `<volume path>/<name>` of each named volume the source announced
    /// that this host does not have yet (the restore makes it from the
    /// checkpoint): never a volume of another container's here.
    pub volume_dirs: Vec<PathBuf>,
    /// Podman's graph root: the container's root file system is under it.
    pub graph_root: Option<PathBuf>,
    /// tern's CRIU options file for this container ([`super::lazy::CONF`]).
    pub criu_conf: PathBuf,
}

impl HostPaths {
    /// From the container's folder here (`<graph root>/<driver>-containers/<id>/userdata`),
    /// `podman info` and the volumes this host has.
    pub fn new(announced: &ContainerInfo, folder: &Path, info: Option<&crate::engine::PodmanInfo>, existing_volumes: &[String]) -> HostPaths {
        let mut paths = HostPaths { criu_conf: folder.join(super::lazy::CONF), ..Default::default() };
        if let Some(root) = folder.parent() {
            paths.container_dirs.push(root.to_path_buf());
            paths.graph_root = root.parent().and_then(Path::parent).map(Path::to_path_buf);
        }
        let Some(info) = info else { return paths };
        let store = &info.store;
        if let (Some(run_root), Some(driver)) = (store.run_root.as_deref(), store.graph_driver_name.as_deref()) {
            if let Some(dir) = crate::engine::bundle_path(run_root, driver, &announced.id).as_deref().and_then(Path::parent) {
                paths.container_dirs.push(dir.to_path_buf());
            }
        }
        if let Some(vp) = store.volume_path.as_deref().filter(|p| p.starts_with('/')) {
            for v in &announced.volumes {
                if tern_proto::fileset::check_name(&v.name).is_ok() && !existing_volumes.contains(&v.name) {
                    paths.volume_dirs.push(Path::new(vp).join(&v.name));
                }
            }
        }
        paths
    }
}

/// `config.dump` and `spec.dump` as Podman will read them.
#[derive(Debug, Clone, Default)]
pub struct Dumps {
    pub config: Vec<u8>,
    pub spec: Vec<u8>,
}

/// Reads the small archive Podman imports: checks every member
/// ([`check_member`], by its real name) and takes `config.dump` and
/// `spec.dump` (each exactly once).
pub fn read_dumps(rest: &Path) -> Result<Dumps, Refusal> {
    let unreadable = |e: &dyn std::fmt::Display| Refusal::Unreadable(format!("the checkpoint archive cannot be read: {e}"));
    let file = std::fs::File::open(rest).map_err(|e| unreadable(&e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let (mut config, mut spec) = (None, None);
    for entry in archive.entries_with_seek().map_err(|e| unreadable(&e))? {
        let mut entry = entry.map_err(|e| unreadable(&e))?;
        let kind = match entry.header().entry_type() {
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::Regular,
            tar::EntryType::Directory => MemberKind::Directory,
            tar::EntryType::Symlink => MemberKind::Symlink,
            tar::EntryType::Link => MemberKind::HardLink,
            other => MemberKind::Other(other.as_byte()),
        };
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        check_member(&path, kind, link.as_deref()).map_err(|e| Refusal::Unreadable(e.to_string()))?;
        let name = path.strip_prefix(b"./").unwrap_or(&path);
        let slot = match name {
            b"config.dump" => &mut config,
            b"spec.dump" => &mut spec,
            _ => continue,
        };
        let shown = String::from_utf8_lossy(name).into_owned();
        if slot.is_some() {
            return Err(Refusal::Unreadable(format!("the checkpoint holds {shown} twice")));
        }
        if kind != MemberKind::Regular || entry.size() > MAX_DUMP {
            return Err(Refusal::Unreadable(format!("the checkpoint's {shown} is not a regular file of at most {MAX_DUMP} bytes")));
        }
        let mut data = Vec::new();
        (&mut entry).take(MAX_DUMP).read_to_end(&mut data).map_err(|e| unreadable(&e))?;
        *slot = Some(data);
    }
    let missing = |what: &str| Refusal::Unreadable(format!("the checkpoint has no {what}"));
    Ok(Dumps { config: config.ok_or_else(|| missing("config.dump"))?, spec: spec.ok_or_else(|| missing("spec.dump"))? })
}

/// What the checks need of this host for `announced`, whose folder here is
/// `folder`: asked of Podman when the migration begins, so that the
/// frozen interval does not wait for it.
pub async fn host_paths(engine: &dyn crate::engine::Engine, announced: &ContainerInfo, folder: &Path) -> HostPaths {
    let info = match engine.info().await {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!("podman info: {e}; bind mounts from the container's run folder and volumes will be refused");
            None
        }
    };
    let volumes = match engine.volumes().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("podman volume ls: {e}; bind mounts from volumes will be refused");
            announced.volumes.iter().map(|v| v.name.clone()).collect()
        }
    };
    HostPaths::new(announced, folder, info.as_ref(), &volumes)
}

/// Reads the archive at `rest` and checks it (module docs) against `host`
/// ([`host_paths`]).
pub async fn admit(rules: &AdmissionConfig, announced: &ContainerInfo, host: &HostPaths, rest: &Path) -> Result<(), Refusal> {
    let rest = rest.to_path_buf();
    let dumps = tokio::task::spawn_blocking(move || read_dumps(&rest))
        .await
        .map_err(|e| Refusal::Unreadable(format!("reading the checkpoint archive: {e}")))??;
    let r = check(rules, announced, host, &dumps);
    match &r {
        Ok(()) => tracing::info!(name = %announced.name, "the checkpoint is admitted"),
        Err(e) => tracing::warn!(name = %announced.name, "{e}"),
    }
    r
}

/// The checks of the module docs, on what was read.
pub fn check(p: &AdmissionConfig, announced: &ContainerInfo, host: &HostPaths, dumps: &Dumps) -> Result<(), Refusal> {
    let parse = |what: &str, bytes: &[u8]| -> Result<serde_json::Value, Refusal> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) if v.is_object() => Ok(v),
            Ok(_) => Err(Refusal::Unreadable(format!("the checkpoint's {what} is not a JSON object"))),
            Err(e) => Err(Refusal::Unreadable(format!("the checkpoint's {what} does not parse: {e}"))),
        }
    };
    let config = parse("config.dump", &dumps.config)?;
    let spec = parse("spec.dump", &dumps.spec)?;
    check_identity(announced, &config)?;
    check_config(p, host, &config)?;
    check_spec(p, host, &config, &spec, "spec.dump")?;
    // Podman replaces it with spec.dump on import; a lie in it is still a lie.
    if let Some(inner) = config.get("spec").filter(|s| s.is_object()) {
        check_spec(p, host, &config, inner, "config.dump's spec")?;
    }
    Ok(())
}

fn str_at<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

fn check_identity(announced: &ContainerInfo, config: &serde_json::Value) -> Result<(), Refusal> {
    let same = |what: &'static str, found: &str, expected: &str| {
        if found == expected {
            Ok(())
        } else {
            Err(Refusal::Mismatch { what, found: found.to_string(), announced: expected.to_string() })
        }
    };
    same("ID", str_at(config, "id"), &announced.id)?;
    same("name", str_at(config, "name"), &announced.name)?;
    same("image ID", str_at(config, "rootfsImageID"), &announced.image_id)?;
    if !announced.image.is_empty() && !announced.image.contains("<none>") {
        same("image name", str_at(config, "rootfsImageName"), &announced.image)?;
    }
    Ok(())
}

fn check_config(p: &AdmissionConfig, host: &HostPaths, config: &serde_json::Value) -> Result<(), Refusal> {
    if config.get("privileged").and_then(|v| v.as_bool()) == Some(true) && !p.allow_privileged {
        return Err(policy("a privileged container", "config.dump has privileged = true", "allow_privileged = true"));
    }
    let rootfs = str_at(config, "rootfs");
    if !rootfs.is_empty() {
        check_host_path(p, host, rootfs, "a root file system from a host folder")?;
    }
    Ok(())
}

fn check_spec(p: &AdmissionConfig, host: &HostPaths, config: &serde_json::Value, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    check_criu_config(p, host, spec, label)?;
    check_hooks(p, spec, label)?;
    check_capabilities(p, spec, label)?;
    check_namespaces(p, config, spec, label)?;
    check_devices(p, spec, label)?;
    check_mounts(p, host, spec, label)?;
    if let Some(root) = spec.get("root").and_then(|r| r.get("path")).and_then(|r| r.as_str()).filter(|r| !r.is_empty()) {
        // runc's root: the container's overlay mount under the graph root,
        // or (the spec inside config.dump says `rootfs`) a path relative to
        // the container's own bundle that does not leave it.
        let under_graph = host.graph_root.as_deref().zip(normal(root)).is_some_and(|(g, r)| r.starts_with(g) && r != g);
        let in_bundle = Path::new(root).is_relative() && Path::new(root).components().all(|c| matches!(c, Component::Normal(_)));
        if !under_graph && !in_bundle {
            check_host_path(p, host, root, "a root file system from a host folder")?;
        }
    }
    Ok(())
}

fn check_criu_config(p: &AdmissionConfig, host: &HostPaths, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    let Some(conf) = spec.get("annotations").and_then(|a| a.get(super::lazy::ANNOTATION)) else { return Ok(()) };
    let conf = conf.as_str().unwrap_or("(not a string)");
    if Path::new(conf) == host.criu_conf || p.allow_criu_config {
        return Ok(());
    }
    Err(policy("a CRIU options file not made by tern", format!("{label} annotates {}={conf}", super::lazy::ANNOTATION), "allow_criu_config = true"))
}

fn check_hooks(p: &AdmissionConfig, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    let Some(hooks) = spec.get("hooks").and_then(|h| h.as_object()) else { return Ok(()) };
    for (stage, list) in hooks {
        for hook in list.as_array().into_iter().flatten() {
            let path = str_at(hook, "path");
            if !p.allow_hooks.iter().any(|a| a == Path::new(path)) {
                return Err(policy(
                    "an OCI hook (a program run as root on this host)",
                    format!("{label} runs {path:?} at {stage}"),
                    format!("allow_hooks = [{path:?}]"),
                ));
            }
        }
    }
    Ok(())
}

/// `CAP_SYS_ADMIN`, `sys_admin` and `SYS_ADMIN` are one capability.
fn cap_name(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

fn check_capabilities(p: &AdmissionConfig, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    let Some(sets) = spec.get("process").and_then(|x| x.get("capabilities")).and_then(|c| c.as_object()) else { return Ok(()) };
    let allowed: BTreeSet<String> =
        PODMAN_DEFAULT_CAPS.iter().map(|c| c.to_string()).chain(p.allow_capabilities.iter().map(|c| cap_name(c))).collect();
    let extra: BTreeSet<String> = sets
        .values()
        .flat_map(|set| set.as_array().into_iter().flatten())
        .filter_map(|c| c.as_str())
        .map(cap_name)
        .filter(|c| !allowed.contains(c))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    let list = extra.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    let shown = extra.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>().join(", ");
    Err(policy("capabilities beyond Podman's defaults", format!("{label} grants {shown}"), format!("allow_capabilities = [{list}]")))
}

fn check_namespaces(p: &AdmissionConfig, config: &serde_json::Value, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    let list = spec.get("linux").and_then(|l| l.get("namespaces")).and_then(|n| n.as_array()).cloned().unwrap_or_default();
    let allowed = |t: &str| p.allow_host_namespaces.iter().any(|a| a == t);
    let key = |t: &str| format!("allow_host_namespaces = [{t:?}]");
    for t in OWN_NAMESPACES {
        if !allowed(t) && !list.iter().any(|n| str_at(n, "type") == *t) {
            return Err(policy("a host namespace", format!("{label} has no {t} namespace of its own: it would run in this host's"), key(t)));
        }
    }
    for n in &list {
        let (t, path) = (str_at(n, "type"), str_at(n, "path"));
        if path.is_empty() || allowed(t) {
            continue;
        }
        // Podman's own network namespace (netavark's /run/netns/netns-<uuid>):
        // the restore replaces the path with the one it makes here.
        let podmans = t == "network"
            && config.get("createNetNS").and_then(|c| c.as_bool()) == Some(true)
            && normal(path).is_some_and(|p| p.parent() == Some(Path::new("/run/netns")));
        if !podmans {
            return Err(policy("a namespace not its own", format!("{label} joins the {t} namespace at {path}"), key(t)));
        }
    }
    Ok(())
}

fn check_devices(p: &AdmissionConfig, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    let linux = spec.get("linux");
    let all = p.allow_devices.iter().any(|d| d == "all");
    let mut allowed_numbers: Vec<(i64, i64)> = STANDARD_DEVICES.iter().map(|d| (d.1, d.2)).collect();
    for d in linux.and_then(|l| l.get("devices")).and_then(|d| d.as_array()).into_iter().flatten() {
        let path = str_at(d, "path");
        let number = (d.get("major").and_then(|m| m.as_i64()).unwrap_or(-1), d.get("minor").and_then(|m| m.as_i64()).unwrap_or(-1));
        let standard = STANDARD_DEVICES.iter().any(|s| s.0 == path && (s.1, s.2) == number);
        if standard || all || p.allow_devices.iter().any(|a| a == path) {
            allowed_numbers.push(number);
            continue;
        }
        return Err(policy(
            "a device beyond the standard ones",
            format!("{label} creates {path} ({}:{})", number.0, number.1),
            format!("allow_devices = [{path:?}]"),
        ));
    }
    let rules = linux.and_then(|l| l.get("resources")).and_then(|r| r.get("devices")).and_then(|d| d.as_array()).cloned().unwrap_or_default();
    for r in rules.iter().filter(|r| r.get("allow").and_then(|a| a.as_bool()) == Some(true)) {
        let kind = str_at(r, "type");
        let (major, minor) = (r.get("major").and_then(|m| m.as_i64()), r.get("minor").and_then(|m| m.as_i64()));
        let every = kind.is_empty() || kind == "a" || major.is_none() || minor.is_none() || major == Some(-1) || minor == Some(-1);
        let known = !every && kind == "c" && allowed_numbers.contains(&(major.unwrap_or(-1), minor.unwrap_or(-1)));
        if !(known || all) {
            let what = if every { "every device".to_string() } else { format!("device {kind} {}:{}", major.unwrap_or(-1), minor.unwrap_or(-1)) };
            return Err(policy(
                "device access beyond the standard devices",
                format!("{label}'s device cgroup allows {what}"),
                "allow_devices = [\"all\"]",
            ));
        }
    }
    Ok(())
}

fn check_mounts(p: &AdmissionConfig, host: &HostPaths, spec: &serde_json::Value, label: &str) -> Result<(), Refusal> {
    for m in spec.get("mounts").and_then(|m| m.as_array()).into_iter().flatten() {
        let kind = str_at(m, "type");
        let source = str_at(m, "source");
        let bind =
            kind == "bind" || m.get("options").and_then(|o| o.as_array()).into_iter().flatten().any(|o| matches!(o.as_str(), Some("bind" | "rbind")));
        if !bind && VIRTUAL_MOUNTS.contains(&kind) {
            continue;
        }
        if !bind && !source.starts_with('/') {
            return Err(policy(
                "a mount of the host's",
                format!("{label} mounts {source:?} of type {kind:?} on {}", str_at(m, "destination")),
                "allow_bind_sources",
            ));
        }
        check_host_path(p, host, source, "a bind mount from outside the container's own folders and volumes").map_err(|e| match e {
            Refusal::Policy { rule, value, key } => {
                Refusal::Policy { rule, value: format!("{label} mounts {value} on {}", str_at(m, "destination")), key }
            }
            other => other,
        })?;
    }
    Ok(())
}

/// `path` made plain: absolute, without `.`; `None` with a `..` in it.
fn normal(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A host path the container would see: only the container's own
/// folders, its volumes, and what the operator allowed.
fn check_host_path(p: &AdmissionConfig, host: &HostPaths, source: &str, rule: &'static str) -> Result<(), Refusal> {
    let refuse = || policy(rule, source.to_string(), format!("allow_bind_sources = [{source:?}]"));
    let Some(path) = normal(source) else { return Err(refuse()) };
    let under = |dirs: &mut dyn Iterator<Item = &Path>| dirs.filter_map(|d| normal(d.to_str()?)).any(|d| path.starts_with(&d));
    let ok = under(&mut host.container_dirs.iter().map(PathBuf::as_path))
        || under(&mut host.volume_dirs.iter().map(PathBuf::as_path))
        || under(&mut p.allow_bind_sources.iter().map(PathBuf::as_path));
    if ok {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// Why the image the source announced is not given its name here (see
/// [`check_image`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefusal {
    #[error("the announced image ID {0:?} is not a full image ID (64 hex digits)")]
    NotFullId(String),
    #[error("the announced image name {name:?} is not a valid image reference: {why}")]
    BadName { name: String, why: &'static str },
    /// The ID is valid, and no image of this host has it.
    #[error("no image here has the announced ID {0} (the shipped image is another)")]
    Absent(String),
}

/// Whether the source's image name and ID are ones this host may tag an
/// image with: the ID a full image ID (64 hex digits: a shorter one, or a
/// name, could pick another image here), the name a valid image reference
/// (distribution's grammar: `[host[:port]/]path[:tag][@digest]`). The
/// error says which and why.
pub fn check_image(name: &str, id: &str) -> Result<(), ImageRefusal> {
    if !(id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) {
        return Err(ImageRefusal::NotFullId(id.to_string()));
    }
    check_image_name(name)
}

/// Whether `name` is a valid image reference (the name half of [`check_image`]).
pub fn check_image_name(name: &str) -> Result<(), ImageRefusal> {
    image_reference(name).map_err(|why| ImageRefusal::BadName { name: name.to_string(), why })
}

fn image_reference(r: &str) -> Result<(), &'static str> {
    let (rest, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d.split_once(':').ok_or("its digest has no algorithm")?;
        let algo_ok = !algo.is_empty()
            && algo.split(['+', '.', '_', '-']).all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !algo_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("its digest is not algorithm:hex");
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = (1..=128).contains(&t.len())
            && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !ok {
            return Err("its tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return Err("its name is empty or longer than 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    if parts.len() > 1 && (first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())) {
        let (host, port) = match first.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (first, None),
        };
        let host_ok = !host.is_empty()
            && host
                .split('.')
                .all(|c| !c.is_empty() && !c.starts_with('-') && !c.ends_with('-') && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !host_ok || port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err("its registry is not host[:port]");
        }
        parts.remove(0);
    }
    for c in parts {
        // alnum (separator alnum)*, separator one of `.`, `_`, `__`, `-`+.
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        let ends_ok = b.first().is_some_and(|x| alnum(*x)) && b.last().is_some_and(|x| alnum(*x));
        let seps_ok = c
            .split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .all(|s| s == "." || s == "_" || s == "__" || s.bytes().all(|x| x == b'-'));
        if !ends_ok || !seps_ok || !b.iter().all(|x| alnum(*x) || matches!(x, b'.' | b'_' | b'-')) {
            return Err("a path component is not lowercase letters and digits joined by `.`, `_`, `__` or `-`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
