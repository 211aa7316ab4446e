//! A stored checkpoint as an OCI image, so that it can be pushed to a
//! registry with the user's own tools (`podman push`, `skopeo copy`) and
//! restored by Podman itself (`podman container restore IMAGE`).
//!
//! The image is what Podman's `checkpoint --create-image` makes
//! (`libpod/container_internal_common.go`, `createCheckpointImage`): one
//! layer holding the files of the exported checkpoint archive at its root
//! (`config.dump`, `spec.dump`, `checkpoint/`, ...), and the manifest
//! annotations `io.podman.annotations.checkpoint.*` that say which
//! container it is and what host it was taken on (Podman's
//! `addCheckpointImageMetadata`; restore looks for `...checkpoint.name`).
//! The archive Podman exported is itself a tar of those files, so it is the
//! layer as it is, uncompressed: no byte of it is rewritten.
//!
//! Written as an `oci-archive` (an OCI image layout in a tar) for `podman
//! load`. Digests are SHA-256, as OCI requires.

use std::io::{Read, Write};
use std::path::Path;
use tern_proto::checkpoint::StoredCheckpoint;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What the image is, once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Podman's image ID: the hex SHA-256 of the config.
    pub id: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// OCI's name for an architecture Rust (and `uname -m`) names otherwise.
fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64le" | "ppc64le" => "ppc64le",
        other => other,
    }
}

/// The manifest's annotations: Podman's names, with what tern knows of the
/// host the checkpoint was taken on.
pub fn annotations(c: &StoredCheckpoint) -> serde_json::Map<String, serde_json::Value> {
    let f = &c.facts;
    let pairs = [
        ("io.podman.annotations.checkpoint.name", c.container.name.clone()),
        ("io.podman.annotations.checkpoint.rawImageName", c.container.image.clone()),
        ("io.podman.annotations.checkpoint.rootfsImageID", c.container.image_id.clone()),
        ("io.podman.annotations.checkpoint.rootfsImageName", c.container.image.clone()),
        ("io.podman.annotations.checkpoint.podman.version", f.podman_version.clone()),
        // Podman writes CRIU's version as one number (40201 for 4.2.1).
        ("io.podman.annotations.checkpoint.criu.version", criu_number(&f.criu_version)),
        ("io.podman.annotations.checkpoint.runtime.name", f.runtime_name.clone()),
        ("io.podman.annotations.checkpoint.runtime.version", f.runtime_version.clone()),
        ("io.podman.annotations.checkpoint.host.arch", oci_arch(&f.arch).to_string()),
        ("io.podman.annotations.checkpoint.host.kernel", f.kernel.clone()),
        ("io.podman.annotations.checkpoint.cgroups.version", format!("{:?}", f.cgroups).to_lowercase()),
        ("org.opencontainers.image.description", format!("tern checkpoint {} of {} taken on {}", c.name, c.container.name, c.taken_on)),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect()
}

/// `4.2.1` as CRIU numbers its versions: 40201.
fn criu_number(v: &str) -> String {
    let n = tern_proto::compat::version_numbers(v);
    let part = |i: usize| n.get(i).copied().unwrap_or(0);
    (part(0) * 10000 + part(1) * 100 + part(2)).to_string()
}

/// Writes `archive` (a stored checkpoint's) as an OCI image named `image`
/// into the oci-archive `out`.
pub fn write(c: &StoredCheckpoint, archive: &Path, image: &str, out: &Path) -> std::io::Result<Written> {
    // The layer's digest: one pass over the archive.
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let layer_size = super::each_chunk(archive, |b| ctx.update(b))?;
    let layer = hex(ctx.finish().as_ref());
    let config = serde_json::json!({
        "created": rfc3339(c.created_unix),
        "architecture": oci_arch(&c.facts.arch),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer}")] },
        "history": [{ "created": rfc3339(c.created_unix), "created_by": format!("tern checkpoint image {}", c.name) }],
    });
    let config = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": format!("sha256:{config_digest}"), "size": config.len() },
        "layers": [{ "mediaType": LAYER, "digest": format!("sha256:{layer}"), "size": layer_size }],
        "annotations": annotations(c),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": image },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(std::io::Error::other)?;

    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    let small = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(c.created_unix);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    small(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    small(&mut tar, "index.json", &index)?;
    small(&mut tar, &format!("blobs/sha256/{manifest_digest}"), &manifest)?;
    small(&mut tar, &format!("blobs/sha256/{config_digest}"), &config)?;
    let mut h = tar::Header::new_ustar();
    h.set_size(layer_size);
    h.set_mode(0o644);
    h.set_mtime(c.created_unix);
    h.set_cksum();
    // Read again as it is appended; a store's archive does not change.
    tar.append_data(&mut h, format!("blobs/sha256/{layer}"), std::fs::File::open(archive)?.take(layer_size))?;
    tar.into_inner()?.flush()?;
    Ok(Written { id: config_digest })
}

/// RFC 3339 of a Unix time, UTC.
fn rfc3339(unix: u64) -> String {
    let [y, m, d, h, mi, s] = tern_proto::facts::utc_parts(unix);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_versions_are_numbered_as_podman_writes_them() {
        assert_eq!(criu_number("4.2.1"), "40201");
        assert_eq!(criu_number("3.17"), "31700");
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(rfc3339(1_796_042_096), "2026-11-30T12:34:56Z");
    }

    fn checkpoint() -> StoredCheckpoint {
        let cap = serde_json::json!({ "supported": true, "detail": "" });
        serde_json::from_value(serde_json::json!({
            "name": "db-1", "taken_on": "web1", "created_unix": 1_796_042_096, "bytes": 0, "digest": vec![0u8; 32],
            "content": { "processes": 1, "threads": 1, "memory_bytes": 0, "tcp_connections": 0, "files_bytes": 0, "images_bytes": 0 },
            "tcp_established": false, "file_locks": false, "left_running": true, "standby_keep": null,
            "container": { "name": "db", "id": "a", "image": "localhost/db:1", "image_id": "b", "state": "running", "ips": [],
                "memory_bytes": 0, "files_bytes": 0, "volumes": [], "pid": 1, "networks": [], "ports": [], "connections": [],
                "process_uids": [], "systemd_unit": null },
            "facts": { "name": "web1", "agent_version": "0", "podman_version": "4.3.1", "runtime_name": "runc",
                "runtime_version": "runc version 1.1.5", "criu_version": "4.2.1", "cgroups": "Hybrid", "kernel": "6.18",
                "arch": "x86_64", "cpu_flags": [], "network_backend": "netavark", "dirty_tracking": cap,
                "lazy_restore": cap, "dump_other_users": cap, "status": {} },
        }))
        .unwrap()
    }

    /// Every digest in the layout is the SHA-256 of the blob it names, the
    /// layer is the archive byte for byte, and Podman's annotations are on
    /// the manifest.
    #[test]
    fn the_layout_holds_the_archive_as_its_layer_under_its_digests() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive.tar");
        let body: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&archive, &body).unwrap();
        let out = dir.path().join("image.tar");
        let w = write(&checkpoint(), &archive, "localhost/tern-checkpoint-db-1:latest", &out).unwrap();
        let mut files = std::collections::HashMap::new();
        let mut tar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.insert(name, v);
        }
        for (name, data) in &files {
            if let Some(d) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(data), d, "{name}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "localhost/tern-checkpoint-db-1:latest");
        let m = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let manifest: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{m}")]).unwrap();
        assert_eq!(manifest["annotations"]["io.podman.annotations.checkpoint.name"], "db");
        assert_eq!(manifest["annotations"]["io.podman.annotations.checkpoint.criu.version"], "40201");
        assert_eq!(manifest["config"]["digest"], format!("sha256:{}", w.id));
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        assert_eq!(files[&format!("blobs/sha256/{layer}")], body);
        let config: serde_json::Value = serde_json::from_slice(&files[&format!("blobs/sha256/{}", w.id)]).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{layer}"));
        assert_eq!(config["architecture"], "amd64");
    }
}
