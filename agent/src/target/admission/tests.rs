//! Admission against what Podman 4 writes for a plain root container
//! (`podman run -d --name web -v data:/data -p 8080:80 localhost/tern-busybox`),
//! and crafted checkpoints that each ask for one thing too many.

use super::*;
use serde_json::{json, Value};

const ID: &str = "5c1a1f0e3b7d4c2a9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d";
const IMAGE_ID: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";
const GRAPH: &str = "/var/lib/containers/storage";
const RUN: &str = "/run/containers/storage";

fn announced() -> ContainerInfo {
    ContainerInfo {
        name: "web".into(),
        id: ID.into(),
        image: "localhost/tern-busybox:latest".into(),
        image_id: IMAGE_ID.into(),
        state: "running".into(),
        ips: vec![],
        memory_bytes: 64 << 20,
        files_bytes: 0,
        volumes: vec![tern_proto::facts::Volume { name: "data".into(), path: format!("{GRAPH}/volumes/data/_data") }],
        pid: 4242,
        networks: vec![],
        ports: vec![],
        connections: vec![],
        process_uids: vec![],
        systemd_unit: None,
        pod: None,
        dependencies: vec![],
    }
}

fn host() -> HostPaths {
    let info: crate::engine::PodmanInfo = serde_json::from_value(json!({
        "store": {"graphRoot": GRAPH, "graphDriverName": "overlay", "runRoot": RUN, "volumePath": format!("{GRAPH}/volumes")}
    }))
    .unwrap();
    let folder = PathBuf::from(format!("{GRAPH}/overlay-containers/{ID}/userdata"));
    HostPaths::new(&announced(), &folder, Some(&info), &["other".into()])
}

/// Podman 4's config.dump (libpod's ContainerConfig), the fields that matter and a few others.
fn config() -> Value {
    json!({
        "spec": spec(),
        "id": ID,
        "name": "web",
        "lockID": 3,
        "CreateCommand": ["podman", "run", "-d", "--name", "web", "-v", "data:/data", "-p", "8080:80", "localhost/tern-busybox"],
        "RawImageName": "localhost/tern-busybox",
        "rootfsImageID": IMAGE_ID,
        "rootfsImageName": "localhost/tern-busybox:latest",
        "shmSize": 65536000,
        "staticDir": format!("{GRAPH}/overlay-containers/{ID}/userdata"),
        "mounts": ["/dev/shm"],
        "namedVolumes": [{"volumeName": "data", "dest": "/data", "options": ["rprivate", "nosuid", "nodev", "rbind"]}],
        "privileged": false,
        "ProcessLabel": "",
        "MountLabel": "",
        "createNetNS": true,
        "portMappings": [{"host_ip": "", "container_port": 80, "host_port": 8080, "range": 1, "protocol": "tcp"}],
        "networkMode": "bridge",
        "stopSignal": 15,
        "createdTime": "2026-11-30T03:00:00.000000000Z"
    })
}

/// Podman 4's spec.dump: the generated runtime spec (config.json) of a
/// running root container with a bridge network, as checkpointed.
fn spec() -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];
    let userdata = format!("{RUN}/overlay-containers/{ID}/userdata");
    let bind = |src: String, dst: &str| json!({"destination": dst, "type": "bind", "source": src, "options": ["bind", "rprivate"]});
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0, 1, 2, 3, 4, 6, 10]},
            "args": ["sh", "-c", "while true; do sleep 1; done"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "container=podman", "HOSTNAME=5c1a1f0e3b7d"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}, {"type": "RLIMIT_NPROC", "hard": 4194304, "soft": 4194304}],
            "oomScoreAdj": 0
        },
        "root": {"path": format!("{GRAPH}/overlay/3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e/merged")},
        "hostname": "5c1a1f0e3b7d",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/data", "type": "bind", "source": format!("{GRAPH}/volumes/data/_data"), "options": ["nosuid", "nodev", "rbind", "rprivate"]},
            bind(format!("{userdata}/hostname"), "/etc/hostname"),
            bind(format!("{userdata}/resolv.conf"), "/etc/resolv.conf"),
            bind(format!("{userdata}/hosts"), "/etc/hosts"),
            bind(format!("{GRAPH}/overlay-containers/{ID}/userdata/shm"), "/dev/shm"),
            bind(format!("{userdata}/.containerenv"), "/run/.containerenv"),
            bind(format!("{userdata}/run/secrets"), "/run/secrets"),
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "annotations": {
            "io.container.manager": "libpod",
            "io.podman.annotations.autoremove": "FALSE",
            "io.podman.annotations.init": "FALSE",
            "io.podman.annotations.privileged": "FALSE",
            "io.podman.annotations.publish-all": "FALSE",
            "org.opencontainers.image.stopSignal": "15"
        },
        "linux": {
            "sysctl": {"net.ipv4.ping_group_range": "0 0"},
            "resources": {"devices": [{"allow": false, "access": "rwm"}], "pids": {"limit": 2048}},
            "cgroupsPath": format!("machine.slice:libpod:{ID}"),
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/run/netns/netns-6c3b5a0e-58f1-2b6a-4b0e-0b9a2d1c5e7f"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"}
            ],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": []},
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn dumps(config: &Value, spec: &Value) -> Dumps {
    Dumps { config: serde_json::to_vec(config).unwrap(), spec: serde_json::to_vec(spec).unwrap() }
}

fn run(config: &Value, spec: &Value) -> Result<(), Refusal> {
    check(&AdmissionConfig::default(), &announced(), &host(), &dumps(config, spec))
}

/// `spec` changed by `f`, in both dumps (config.dump embeds it).
fn crafted(f: impl Fn(&mut Value)) -> (Value, Value) {
    let mut s = spec();
    f(&mut s);
    let mut c = config();
    c["spec"] = s.clone();
    (c, s)
}

fn refused(r: Result<(), Refusal>) -> String {
    r.expect_err("admitted").to_string()
}

#[test]
fn a_plain_podman_container_is_admitted() {
    run(&config(), &spec()).unwrap();
    // tern's own CRIU options file (lazy.rs) is fine.
    let (c, s) = crafted(|s| s["annotations"]["org.criu.config"] = json!(format!("{GRAPH}/overlay-containers/{ID}/userdata/tern-criu.conf")));
    run(&c, &s).unwrap();
    // config.dump's spec as created (no root path yet) is fine too.
    let mut c = config();
    // As Podman 4 writes it: relative to the container's bundle.
    c["spec"]["root"] = json!({"path": "rootfs"});
    run(&c, &spec()).unwrap();
}

#[test]
fn a_bind_mount_of_the_root_is_refused() {
    let (c, s) =
        crafted(|s| s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]})));
    let e = refused(run(&c, &s));
    assert_eq!(
        e,
        "refused by this host's admission policy: a bind mount from outside the container's own folders and volumes: spec.dump mounts / on /host \
         (to allow it, set `allow_bind_sources = [\"/\"]` in the [admission] table of the target agent's config)"
    );
    // A way out of an allowed folder is no way in.
    let (c, s) = crafted(|s| {
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/x", "source": format!("{GRAPH}/volumes/data/_data/../../../../../etc"), "options": ["bind"]}))
    });
    assert!(refused(run(&c, &s)).contains("a bind mount from outside"));
    // Another container's volume here is not this container's.
    let mut other = host();
    other.volume_dirs.clear();
    let taken = HostPaths::new(&announced(), Path::new(&format!("{GRAPH}/overlay-containers/{ID}/userdata")), None, &["data".into()]);
    assert!(taken.volume_dirs.is_empty());
    assert!(refused(check(&AdmissionConfig::default(), &announced(), &other, &dumps(&config(), &spec())))
        .contains(&format!("{GRAPH}/volumes/data/_data")));
    // Allowed by the operator.
    let p = AdmissionConfig { allow_bind_sources: vec!["/srv/data".into()], ..Default::default() };
    let (c, s) = crafted(|s| {
        s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/d", "type": "bind", "source": "/srv/data/web", "options": ["rbind"]}))
    });
    check(&p, &announced(), &host(), &dumps(&c, &s)).unwrap();
}

#[test]
fn capabilities_beyond_podmans_defaults_are_refused() {
    let (c, s) = crafted(|s| s["process"]["capabilities"]["bounding"].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN")));
    let e = refused(run(&c, &s));
    assert_eq!(
        e,
        "refused by this host's admission policy: capabilities beyond Podman's defaults: spec.dump grants CAP_SYS_ADMIN \
         (to allow it, set `allow_capabilities = [\"SYS_ADMIN\"]` in the [admission] table of the target agent's config)"
    );
    let p = AdmissionConfig { allow_capabilities: vec!["CAP_SYS_ADMIN".into()], ..Default::default() };
    check(&p, &announced(), &host(), &dumps(&c, &s)).unwrap();
}

#[test]
fn a_privileged_container_is_refused() {
    let mut c = config();
    c["privileged"] = json!(true);
    let e = refused(run(&c, &spec()));
    assert_eq!(
        e,
        "refused by this host's admission policy: a privileged container: config.dump has privileged = true \
         (to allow it, set `allow_privileged = true` in the [admission] table of the target agent's config)"
    );
}

#[test]
fn host_namespaces_are_refused() {
    // --network=host: no network namespace of its own.
    let (c, s) = crafted(|s| s["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "network"));
    let e = refused(run(&c, &s));
    assert_eq!(
        e,
        "refused by this host's admission policy: a host namespace: spec.dump has no network namespace of its own: it would run in this host's \
         (to allow it, set `allow_host_namespaces = [\"network\"]` in the [admission] table of the target agent's config)"
    );
    // Joining the host's by path.
    let (c, s) = crafted(|s| s["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/1/ns/pid"}));
    assert!(refused(run(&c, &s)).contains("a namespace not its own: spec.dump joins the pid namespace at /proc/1/ns/pid"));
    // A /run/netns path Podman would not replace (it makes none: createNetNS false).
    let mut c = config();
    c["createNetNS"] = json!(false);
    assert!(refused(run(&c, &spec())).contains("joins the network namespace at /run/netns/netns-"));
}

#[test]
fn hooks_devices_and_foreign_criu_options_are_refused() {
    let (c, s) = crafted(|s| s["hooks"] = json!({"prestart": [{"path": "/tmp/evil", "args": ["evil"]}]}));
    let e = refused(run(&c, &s));
    assert_eq!(
        e,
        "refused by this host's admission policy: an OCI hook (a program run as root on this host): spec.dump runs \"/tmp/evil\" at prestart \
         (to allow it, set `allow_hooks = [\"/tmp/evil\"]` in the [admission] table of the target agent's config)"
    );
    let (c, s) = crafted(|s| {
        s["linux"]["devices"] = json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]);
    });
    assert!(refused(run(&c, &s)).contains("a device beyond the standard ones: spec.dump creates /dev/sda (8:0)"));
    let (c, s) = crafted(|s| s["linux"]["resources"]["devices"].as_array_mut().unwrap().push(json!({"allow": true, "access": "rwm"})));
    assert!(refused(run(&c, &s)).contains("device cgroup allows every device"));
    let (c, s) = crafted(|s| s["annotations"]["org.criu.config"] = json!("/tmp/criu-evil.conf"));
    let e = refused(run(&c, &s));
    assert_eq!(
        e,
        "refused by this host's admission policy: a CRIU options file not made by tern: spec.dump annotates org.criu.config=/tmp/criu-evil.conf \
         (to allow it, set `allow_criu_config = true` in the [admission] table of the target agent's config)"
    );
    // tern's file name in another folder is not tern's file.
    let (c, s) = crafted(|s| s["annotations"]["org.criu.config"] = json!("/tmp/tern-criu.conf"));
    assert!(refused(run(&c, &s)).contains("a CRIU options file not made by tern"));
}

#[test]
fn a_checkpoint_of_another_container_or_image_is_refused() {
    let mut c = config();
    c["id"] = json!("0".repeat(64));
    let e = refused(run(&c, &spec()));
    assert_eq!(
        e,
        format!(
            "refused: the checkpoint is not the container the source announced: its ID is \"{}\" in config.dump, the source announced \"{ID}\"",
            "0".repeat(64)
        )
    );
    let mut c = config();
    c["rootfsImageID"] = json!("f".repeat(64));
    assert!(refused(run(&c, &spec())).contains("its image ID is"));
    let mut c = config();
    c["name"] = json!("db");
    assert!(refused(run(&c, &spec())).contains("its name is \"db\""));
    let mut c = config();
    c["rootfsImageName"] = json!("docker.io/library/evil:latest");
    assert!(refused(run(&c, &spec())).contains("its image name is"));
}

#[test]
fn the_spec_inside_config_dump_is_checked_too() {
    let mut c = config();
    c["spec"]["process"]["capabilities"]["effective"].as_array_mut().unwrap().push(json!("CAP_SYS_MODULE"));
    assert!(refused(run(&c, &spec())).contains("config.dump's spec grants CAP_SYS_MODULE"));
}

#[test]
fn a_root_outside_the_graph_root_is_refused() {
    let (c, s) = crafted(|s| s["root"]["path"] = json!("/"));
    assert!(refused(run(&c, &s)).contains("a root file system from a host folder: /"));
    let mut c = config();
    c["rootfs"] = json!("/etc");
    assert!(refused(run(&c, &spec())).contains("a root file system from a host folder: /etc"));
    // Relative to the bundle is its own folder, unless it climbs out.
    let (c, s) = crafted(|s| s["root"]["path"] = json!("../../../../etc"));
    assert!(refused(run(&c, &s)).contains("a root file system from a host folder: ../../../../etc"));
}

fn archive(members: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rest.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.finish().unwrap();
    (dir, path)
}

#[test]
fn the_dumps_are_read_from_the_archive_podman_imports() {
    let (c, s) = (serde_json::to_vec(&config()).unwrap(), serde_json::to_vec(&spec()).unwrap());
    let (_d, path) = archive(&[("config.dump", &c), ("./spec.dump", &s), ("rootfs-diff.tar", &[0u8; 1024])]);
    let d = read_dumps(&path).unwrap();
    check(&AdmissionConfig::default(), &announced(), &host(), &d).unwrap();
    let (_d, path) = archive(&[("config.dump", &c), ("spec.dump", &s), ("spec.dump", b"{}")]);
    assert_eq!(read_dumps(&path).unwrap_err().to_string(), "refused: the checkpoint holds spec.dump twice");
    let (_d, path) = archive(&[("config.dump", &c)]);
    assert_eq!(read_dumps(&path).unwrap_err().to_string(), "refused: the checkpoint has no spec.dump");
    // A name in a PAX header (what Go's archive/tar writes for long names)
    // is checked as the real name, whatever the member's own header says.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rest.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, data) in [("config.dump", &c), ("spec.dump", &s)] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.append_pax_extensions([("path", &b"checkpoint/../../../etc/cron.d/x"[..])]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    b.append_data(&mut h, "innocent", &b"x"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    let e = read_dumps(&path).unwrap_err().to_string();
    assert!(e.contains("checkpoint/../../../etc/cron.d/x") && e.contains("a path with `..` in it"), "{e}");
}

#[test]
fn image_names_and_ids_are_checked_before_tagging() {
    check_image("localhost/tern-busybox:latest", IMAGE_ID).unwrap();
    check_image("docker.io/library/redis:7.2-alpine", IMAGE_ID).unwrap();
    check_image("registry.example.com:5000/team/app_x__y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", IMAGE_ID).unwrap();
    for bad in ["--rootfs=/", "Busybox", "a//b", "a/b:", "a:b:c/d", "-x", "x/-y", "host:99999999/x", "a b", ""] {
        assert!(check_image(bad, IMAGE_ID).is_err(), "{bad:?} passed");
    }
    for bad_id in ["img1", "alpine", &IMAGE_ID[..12], &format!("{IMAGE_ID}0"), &IMAGE_ID.to_uppercase()] {
        let e = check_image("localhost/x:1", bad_id).unwrap_err().to_string();
        assert!(e.contains("not a full image ID"), "{e}");
    }
}
