//! Helpers for the end-to-end tests: the lab (`scripts/lab.sh`), podman on a
//! lab host, the `tern` CLI, and `wait_until` instead of sleeps.
//!
//! The tests need root and the lab's real Podman, runc and CRIU; they are
//! `#[ignore]`d for a plain `cargo test` and run by `scripts/test.sh`
//! (`cargo test -p tern-tests -- --ignored --test-threads=1`).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "localhost/tern-busybox:latest";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn bin_dir() -> PathBuf {
    std::env::var_os("TERN_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/release"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command and returns its output, whatever its exit status.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    Ok(out)
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn lab(args: &[&str]) -> Command {
    let mut c = Command::new(repo_root().join("scripts/lab.sh"));
    c.args(args).current_dir(repo_root()).env("TERN_NO_BUILD", "1");
    c
}

pub fn podman(host: &str, args: &[&str]) -> Command {
    let mut c = lab(&["podman", host]);
    c.args(args);
    c
}

pub fn tern(args: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("tern"));
    c.args(args).current_dir(repo_root());
    c
}

/// The result of a `tern ... --json` call.
pub struct TernRun {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
    pub all: String,
}

pub fn tern_json(args: &[&str]) -> Result<TernRun> {
    let mut full = args.to_vec();
    full.push("--json");
    let out = run(&mut tern(&full))?;
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(stdout.trim()).with_context(|| format!("tern printed no JSON: {all}"))?
    };
    // Every document, a failure's too, says which shape it has.
    anyhow::ensure!(json.is_null() || json["schema"] == 1, "tern's JSON has no \"schema\": 1: {all}");
    Ok(TernRun { code: out.status.code().unwrap_or(-1), json, stderr: String::from_utf8_lossy(&out.stderr).into(), all })
}

/// Polls `cond` until it returns `Ok(Some(v))` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    // Slow tiers (emulation) stretch every wait, as the binaries do.
    let scale: u32 = std::env::var("TERN_TIMEOUT_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let timeout = timeout * scale;
    let start = Instant::now();
    let mut last_err = None;
    while start.elapsed() < timeout {
        match cond() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})")
}

/// Serializes the tests (they share one lab) and brings the lab up once.
pub fn lab_guard() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static UP: OnceLock<()> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    UP.get_or_init(|| {
        ok(&mut lab(&["up"])).expect("scripts/lab.sh up failed; run the tests as root through scripts/test.sh");
    });
    guard
}

/// The counter's shell loop: writes 0, 1, 2, ... to /count every 50 ms.
/// Each value is written to a side file and renamed over /count, so a
/// reader never sees a half-written file.
pub const COUNTER_LOOP: &str = "i=0; while true; do echo $i > /count.new; mv /count.new /count; i=$((i+1)); sleep 0.05; done";

/// `setup` (shell commands, each ending in `;` or `&&`), then the counter.
pub fn counter_script(setup: &str) -> String {
    format!("{setup} {COUNTER_LOOP}")
}

/// A counter container ([`COUNTER_LOOP`]).
pub fn start_counter(host: &str, name: &str) -> Result<()> {
    let _ = run(&mut podman(host, &["rm", "-f", "-t", "0", name]));
    ok(&mut podman(host, &["run", "-d", "--name", name, IMAGE, "sh", "-c", COUNTER_LOOP]))?;
    Ok(())
}

pub fn count(host: &str, name: &str) -> Result<u64> {
    let s = ok(&mut podman(host, &["exec", name, "cat", "/count"]))?;
    s.trim().parse().with_context(|| format!("counter printed {s:?}"))
}

/// Waits until the counter on `host` passes `at_least`.
pub fn count_reaches(host: &str, name: &str, at_least: u64) -> Result<u64> {
    wait_until(Duration::from_secs(20), "the counter to advance", || {
        let c = count(host, name)?;
        Ok((c >= at_least).then_some(c))
    })
}

/// `podman top` reads /proc for every process it lists, and fails when one
/// of the counter's short-lived children exits meanwhile ("read
/// /proc/85/cmdline: no such process"): that race is tried again.
fn top_once(host: &str, name: &str) -> Result<Vec<String>> {
    let mut tries = 0;
    let s = loop {
        let out = run(&mut podman(host, &["top", name, "pid", "comm"]))?;
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        tries += 1;
        if tries >= 5 || !err.contains("no such process") {
            bail!("podman top {name} on {host} failed: {}", err.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(s.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect())
}

/// `podman top NAME pid comm` without the header: the long-lived processes,
/// which must keep their PIDs. Short-lived children (the counter's `sleep`
/// and `mv`, a shell forked to exec them, our own `podman exec`) are filtered out by
/// keeping only what two samples 200 ms apart both show.
pub fn top(host: &str, name: &str) -> Result<Vec<String>> {
    let first = top_once(host, name)?;
    std::thread::sleep(Duration::from_millis(200));
    let second = top_once(host, name)?;
    let mut rows: Vec<String> = first.into_iter().filter(|r| second.contains(r)).collect();
    rows.retain(|r| ![" sleep", " cat", " mv"].iter().any(|short| r.ends_with(short)));
    rows.sort();
    Ok(rows)
}

pub fn inspect(host: &str, name: &str) -> Result<Option<Value>> {
    let out = run(&mut podman(host, &["container", "inspect", "--format", "json", name]))?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().and_then(|a| a.first()).cloned())
}

pub fn state(host: &str, name: &str) -> Result<Option<String>> {
    Ok(inspect(host, name)?.and_then(|v| v.pointer("/State/Status").and_then(Value::as_str).map(str::to_string)))
}

pub fn ip(host: &str, name: &str) -> Result<String> {
    let v = inspect(host, name)?.context("no such container")?;
    let nets = v.pointer("/NetworkSettings/Networks").and_then(Value::as_object).context("no networks")?;
    nets.values().find_map(|n| n.get("IPAddress").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)).context("no IP address")
}

/// Removes a container from both hosts.
pub fn remove_everywhere(name: &str) {
    for h in ["client1", "client2"] {
        let _ = run(&mut podman(h, &["rm", "-f", "-t", "0", name]));
    }
}

/// Restarts `host`'s agent with extra TOML appended to its config (faults,
/// fact overrides); `""` restores the plain config.
pub fn restart_agent(host: &str, extra: &str) -> Result<()> {
    let var = format!("LAB_AGENT_EXTRA_{}", host.to_uppercase());
    ok(lab(&["agent-restart", host]).env(var, extra))?;
    Ok(())
}

/// Whether `host`'s agent process is alive (the lab's pid file).
pub fn agent_running(host: &str) -> bool {
    let state = std::env::var_os("TERN_LAB_STATE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tern"));
    let Ok(pid) = std::fs::read_to_string(state.join("hosts").join(host).join("agent.pid")) else { return false };
    let Ok(pid) = pid.trim().parse::<i32>() else { return false };
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// What systemd's `Restart=always` does for an agent: once `host`'s agent
/// dies, it is started again with the plain config. Stops watching when
/// dropped; at most one restart.
pub struct Respawner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<bool>>>,
}

impl Respawner {
    pub fn watch(host: &'static str) -> Respawner {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if !agent_running(host) {
                    restart_agent(host, "")?;
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(false)
        });
        Respawner { stop, thread: Some(thread) }
    }

    /// Stops watching; whether it restarted the agent.
    pub fn finish(mut self) -> Result<bool> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().map_err(|_| anyhow::anyhow!("the respawner panicked"))?
    }
}

impl Drop for Respawner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A memhog container: `mib` MiB of written memory, `dirty` MiB/s of it
/// rewritten, a tick counter in /count. Waits until it ticks (all its
/// memory is written by then).
pub fn start_memhog(host: &str, name: &str, mib: u32, dirty: u32) -> Result<()> {
    let _ = run(&mut podman(host, &["rm", "-f", "-t", "0", name]));
    ok(&mut podman(host, &["run", "-d", "--name", name, IMAGE, "memhog", &mib.to_string(), &dirty.to_string()]))?;
    count_reaches(host, name, 3)?;
    Ok(())
}

/// Every host's `tern hosts --json` entry (the document's `hosts`).
pub fn hosts() -> Result<Vec<Value>> {
    let r = tern_json(&["hosts"])?;
    Ok(r.json["hosts"].as_array().cloned().unwrap_or_default())
}

/// Mount points of tern's tmpfs checkpoint folders on a lab host (each
/// has a mount namespace of its own). None may outlive a migration that
/// ended.
pub fn ram_mounts(host: &str) -> Result<Vec<String>> {
    let info = ok(&mut lab(&["exec", host, "cat", "/proc/self/mountinfo"]))?;
    Ok(info.lines().filter(|l| l.contains(" - tmpfs tern-checkpoint ")).filter_map(|l| l.split(' ').nth(4).map(str::to_string)).collect())
}

/// Traffic holds (netfilter tables `tern-hold-*`) left on a lab host: the
/// container's address would stay unreachable there.
pub fn traffic_holds(host: &str) -> Result<Vec<String>> {
    let out = ok(&mut lab(&["exec", host, "nft", "list", "tables", "netdev"]))?;
    Ok(out.lines().filter(|l| l.contains("tern-hold-")).map(|l| l.trim().to_string()).collect())
}

/// Container folders on `host` that a target made for a migration and
/// Podman never took over (`agent/src/target/inplace.rs`).
pub fn staged_folders(host: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(format!("/var/lib/tern-lab/{host}/storage/overlay-containers"));
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.join("tern-incoming").exists()).collect()
}

/// Nothing a migration made is left on either host.
pub fn no_leftovers() -> Result<()> {
    for h in ["client1", "client2"] {
        let mounts = ram_mounts(h)?;
        anyhow::ensure!(mounts.is_empty(), "tmpfs checkpoint folders left mounted on {h}: {mounts:?}");
        let staged = staged_folders(h);
        anyhow::ensure!(staged.is_empty(), "folders staged for a migration left on {h}: {staged:?}");
        let holds = traffic_holds(h)?;
        anyhow::ensure!(holds.is_empty(), "traffic holds left on {h}: {holds:?}");
    }
    Ok(())
}

/// The CRIU options file a container's `org.criu.config` annotation names
/// (tern sets one on containers it restored lazily), if any.
pub fn criu_options_file(host: &str, name: &str) -> Result<Option<String>> {
    let v = inspect(host, name)?.context("no such container")?;
    Ok(v.pointer("/Config/Annotations/org.criu.config").and_then(Value::as_str).map(str::to_string))
}

/// The application images (scripts/test-image/build-apps.sh).
pub const REDIS_IMAGE: &str = "localhost/tern-redis:latest";
pub const POSTGRES_IMAGE: &str = "localhost/tern-postgres:latest";

/// Imports an application image on `host` unless it is there.
pub fn ensure_image(host: &str, image: &str) -> Result<()> {
    if run(&mut podman(host, &["image", "exists", image]))?.status.success() {
        return Ok(());
    }
    let file = image.trim_start_matches("localhost/").split(':').next().unwrap_or_default();
    let tar = format!("/opt/tern/images/{file}.tar");
    ok(&mut podman(host, &["import", &tar, image]))?;
    Ok(())
}

/// A command on client0, the lab's client machine (`scripts/lab.sh exec`).
pub fn on_client0(args: &[&str]) -> Command {
    let mut c = lab(&["exec", "client0"]);
    c.args(args);
    c
}

/// Starts Redis in container `name` on `host`, on Podman network `network`
/// (`lan`: the lab's macvlan; `podman`: the NATed default bridge), with
/// extra `podman run` flags (`-p ...`). Waits until it answers on
/// `addr_from_client0` (IP:PORT as client0 reaches it; `None`: its own
/// address, port 6379) and returns that address.
pub fn start_redis(host: &str, name: &str, network: &str, flags: &[&str], addr_from_client0: Option<&str>) -> Result<String> {
    let _ = run(&mut podman(host, &["rm", "-f", "-t", "0", name]));
    ensure_image(host, REDIS_IMAGE)?;
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[REDIS_IMAGE, "redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]);
    ok(&mut podman(host, &args))?;
    let addr = match addr_from_client0 {
        Some(a) => a.to_string(),
        None => format!("{}:6379", ip(host, name)?),
    };
    let (h, p) = addr.rsplit_once(':').context("address without a port")?;
    wait_until(Duration::from_secs(20), "Redis to answer client0", || {
        let out = run(&mut on_client0(&["redis-cli", "-h", h, "-p", p, "PING"]))?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("PONG").then_some(()))
    })?;
    Ok(addr)
}

/// `appclient redis` (tests/src/bin/appclient.rs) running on client0: one
/// persistent connection appending 0, 1, 2, ... to a list every 10 ms,
/// measuring its longest wait for an answer.
pub struct RedisClient {
    child: std::process::Child,
    stop: PathBuf,
    out: PathBuf,
    addr: String,
    key: String,
}

impl RedisClient {
    pub fn start(addr: &str, key: &str) -> Result<RedisClient> {
        let dir = std::env::temp_dir().join(format!("tern-appclient-{}-{key}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (stop, out) = (dir.join("stop"), dir.join("summary.json"));
        let bin = bin_dir().join("appclient");
        let child = on_client0(&[
            bin.to_str().unwrap(),
            "redis",
            "--addr",
            addr,
            "--key",
            key,
            "--interval",
            "10ms",
            "--duration",
            "600s",
            "--until-file",
            stop.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting appclient on client0")?;
        // Let it connect and answer a while before anything moves.
        std::thread::sleep(Duration::from_millis(1500));
        Ok(RedisClient { child, stop, out, addr: addr.to_string(), key: key.to_string() })
    }

    /// Stops the client; its summary (`acked`, `errors`, `connections`,
    /// `longest_gap_ms`, ...).
    pub fn finish(mut self) -> Result<Value> {
        std::fs::write(&self.stop, b"")?;
        let status = self.child.wait()?;
        let text = std::fs::read_to_string(&self.out).with_context(|| format!("appclient left no summary (exit {status})"))?;
        let v: Value = serde_json::from_str(&text)?;
        let _ = std::fs::remove_dir_all(self.out.parent().unwrap());
        Ok(v)
    }

    /// Stops the client and checks that it kept its one connection with no
    /// error and that every write it saw acknowledged is there; its summary.
    pub fn finish_intact(self) -> Result<Value> {
        let (addr, key) = (self.addr.clone(), self.key.clone());
        let summary = self.finish()?;
        anyhow::ensure!(summary["errors"] == 0 && summary["connections"] == 1, "the client's connection did not survive: {summary}");
        let acked = summary["acked"].as_u64().unwrap_or(0);
        let v = Self::verify(&addr, &key, acked)?;
        anyhow::ensure!(v["ok"] == true, "acknowledged writes missing: {v}");
        Ok(summary)
    }

    /// Every acknowledged write is in the list, in order (`redis-verify`).
    pub fn verify(addr: &str, key: &str, acked: u64) -> Result<Value> {
        let bin = bin_dir().join("appclient");
        let out = run(&mut on_client0(&[bin.to_str().unwrap(), "redis-verify", "--addr", addr, "--key", key, "--acked", &acked.to_string()]))?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("redis-verify printed {}", text(&out)))?;
        Ok(v)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for RedisClient {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab's address of a host (scripts/lib.sh `lab_ip`).
pub fn lab_ip(host: &str) -> &'static str {
    match host {
        "client0" => "198.51.100.10",
        "client1" => "198.51.100.11",
        "client2" => "198.51.100.12",
        // `scripts/lab.sh up --hosts N`: clientN is 198.51.100.1N.
        "client3" => "198.51.100.13",
        "client4" => "198.51.100.14",
        "client5" => "198.51.100.15",
        "client6" => "198.51.100.16",
        "client7" => "198.51.100.17",
        "client8" => "198.51.100.18",
        other => panic!("no lab host {other}"),
    }
}

/// The link between two lab hosts, cut: every UDP packet between them is
/// dropped in `a`'s network namespace (QUIC is UDP; the coordinator on the
/// lab's bridge still reaches both). Healed when dropped.
pub struct LinkCut {
    host: String,
}

impl LinkCut {
    const TABLE: &'static str = "tern-test-cut";

    pub fn between(a: &str, b: &str) -> Result<LinkCut> {
        let peer = lab_ip(b);
        let t = Self::TABLE;
        let script = format!(
            "nft add table inet {t} && \
             nft add chain inet {t} in '{{ type filter hook input priority -10 ; }}' && \
             nft add chain inet {t} out '{{ type filter hook output priority -10 ; }}' && \
             nft add rule inet {t} in ip saddr {peer} meta l4proto udp drop && \
             nft add rule inet {t} out ip daddr {peer} meta l4proto udp drop"
        );
        ok(&mut lab(&["exec", a, "sh", "-c", &script]))?;
        Ok(LinkCut { host: a.to_string() })
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let _ = run(&mut lab(&["exec", &self.host, "nft", "delete", "table", "inet", Self::TABLE]));
    }
}

/// Samples, until finished, whether a container runs on client1 and on
/// client2. Two copies are counted only when client2's copy ran both just
/// before and just after client1's was seen running, so that a move
/// between two samples is not mistaken for an overlap.
pub struct CopyWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<Vec<String>>>>,
}

impl CopyWatcher {
    pub fn start(name: &str) -> CopyWatcher {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let running = |h: &str| -> Result<bool> { Ok(state(h, &name)?.as_deref() == Some("running")) };
            let mut overlaps = Vec::new();
            let mut before = running("client2")?;
            while !flag.load(Ordering::Relaxed) {
                let here = running("client1")?;
                let after = running("client2")?;
                if before && here && after {
                    overlaps.push(format!("{:?}", std::time::SystemTime::now()));
                }
                before = after;
            }
            Ok(overlaps)
        });
        CopyWatcher { stop, thread: Some(thread) }
    }

    /// Stops sampling; the moments two copies ran.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().map_err(|_| anyhow::anyhow!("the copy watcher panicked"))?
    }
}

impl Drop for CopyWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `tern ARGS --json` started in the background, to be interrupted or
/// killed like a user would.
pub fn tern_spawn(args: &[&str]) -> Result<std::process::Child> {
    let mut full = args.to_vec();
    full.push("--json");
    tern(&full).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().context("spawning tern")
}

/// Waits for a background `tern` to end; its result as [`tern_json`] gives it.
pub fn tern_wait(child: std::process::Child) -> Result<TernRun> {
    let out = child.wait_with_output()?;
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    Ok(TernRun { code: out.status.code().unwrap_or(-1), json, stderr: String::from_utf8_lossy(&out.stderr).into(), all })
}

/// Sends `signal` (`"INT"`, `"KILL"`) to a process.
pub fn signal(pid: u32, signal: &str) -> Result<()> {
    ok(Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]))?;
    Ok(())
}

/// The lab's state folder (certificates, inventories, agents' configs).
pub fn lab_state() -> PathBuf {
    std::env::var_os("TERN_LAB_STATE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tern"))
}

/// The `tern` program the tests run.
pub fn tern_program() -> PathBuf {
    bin_dir().join("tern")
}

/// Stops `host`'s agent as systemd would (SIGTERM) and waits up to
/// `limit` for it to exit.
pub fn stop_agent(host: &str, limit: Duration) -> Result<()> {
    let pid: u32 = std::fs::read_to_string(lab_state().join("hosts").join(host).join("agent.pid"))?.trim().parse()?;
    signal(pid, "TERM")?;
    wait_until(limit, &format!("{host}'s agent to exit"), || Ok((!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())))
}

/// Kills `host`'s agent as `kill -9` would (no cleanup).
pub fn kill_agent(host: &str) -> Result<()> {
    let state = std::env::var_os("TERN_LAB_STATE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tern"));
    let pid = std::fs::read_to_string(state.join("hosts").join(host).join("agent.pid"))?;
    signal(pid.trim().parse()?, "KILL")
}

/// The flag an agent's injected stall shows while it lasts
/// (`agent/src/faults.rs`).
pub fn stalled(host: &str) -> bool {
    stall_flag(host).exists()
}

fn stall_flag(host: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/tern-lab/{host}/agent/fault-stalled"))
}

/// Removes a stall flag an agent killed mid-stall left behind.
pub fn clear_stall_flags() {
    for h in ["client1", "client2"] {
        let _ = std::fs::remove_file(stall_flag(h));
    }
}
