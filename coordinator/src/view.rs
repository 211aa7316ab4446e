//! What `--json` prints: one document per command, each built from the
//! view types below and wrapped in a [`Doc`], which carries `"schema"` and,
//! when the command failed, `"error"` and `"exit_code"`.
//!
//! The wire's types (`tern_proto`) serialize with their own derives. Where
//! the JSON must read differently (its enums: `"hash-pre-copy"`, not
//! `"HashPreCopy"`), a `#[serde(remote = ...)]` mirror gives the derive the
//! same fields with those few shown otherwise; a test checks that the
//! mirrors miss no field the wire type has.

use serde::{Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tern_proto::compat::{Finding, Severity};
use tern_proto::facts::{ContainerInfo, HostFacts};
use tern_proto::{Failure, ImagesInRam, MigrationId, MigrationReport, Mode, Outcome, Phase, PhaseTime, ProbeReport, RoundReport, StepTime};

/// The version of every `--json` document's shape. Adding a field keeps
/// it; renaming, removing or re-nesting one raises it.
pub const SCHEMA: u32 = 1;

/// One `--json` document: `{"schema": 1, ...the command's view}`, and for
/// a failure `{"schema": 1, "error": "...", "exit_code": N, ...whatever
/// partial view the command had}`.
#[derive(Serialize)]
pub struct Doc<T> {
    pub schema: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(flatten)]
    pub body: Option<T>,
}

impl<T: Serialize> Doc<T> {
    pub fn ok(body: T) -> Self {
        Doc { schema: SCHEMA, error: None, exit_code: None, body: Some(body) }
    }

    pub fn failed(error: String, exit_code: u8, partial: Option<T>) -> Self {
        Doc { schema: SCHEMA, error: Some(error), exit_code: Some(exit_code), body: partial }
    }
}

/// A view as a JSON value, to travel with an error or be wrapped in a
/// [`Doc`] by `main`.
pub fn value<T: Serialize>(view: &T) -> serde_json::Value {
    // Views hold strings, numbers and string-keyed maps only.
    serde_json::to_value(view).expect("a view serializes to JSON")
}

// --- tern hosts ---------------------------------------------------------------

/// `tern hosts --json`.
#[derive(Serialize)]
pub struct Hosts<'a> {
    pub hosts: Vec<HostRow<'a>>,
}

/// One host: its facts when its agent answered, else why not.
#[derive(Serialize)]
pub struct HostRow<'a> {
    pub name: &'a str,
    pub address: SocketAddr,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<&'a HostFacts>,
    /// How many containers it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<usize>,
    /// Whether it is cordoned (`tern cordon`), when its agent answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cordoned: Option<bool>,
    /// Why and since when, while cordoned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cordon: Option<CordonJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// A cordon: `{"reason", "since_unix", "since"}` (`since` in UTC, for people).
#[derive(Serialize)]
pub struct CordonJson<'a> {
    pub reason: &'a str,
    pub since_unix: u64,
    pub since: String,
}

impl<'a> CordonJson<'a> {
    pub fn new(c: &'a tern_proto::facts::Cordon) -> Self {
        CordonJson { reason: &c.reason, since_unix: c.since_unix, since: tern_proto::facts::utc(c.since_unix) }
    }
}

// --- tern cordon, uncordon ------------------------------------------------------

/// `tern cordon --json`, `tern uncordon --json`: the host's cordon now, and
/// whether it was cordoned before.
#[derive(Serialize)]
pub struct CordonState<'a> {
    pub host: &'a str,
    pub cordoned: bool,
    pub was_cordoned: bool,
    /// The cordon in force (`null` once uncordoned).
    pub cordon: Option<CordonJson<'a>>,
}

impl<'a> CordonState<'a> {
    pub fn new(host: &'a str, change: &'a tern_proto::CordonChange) -> Self {
        CordonState { host, cordoned: change.now.is_some(), was_cordoned: change.was.is_some(), cordon: change.now.as_ref().map(CordonJson::new) }
    }
}

// --- tern ps ------------------------------------------------------------------

/// `tern ps --json`.
#[derive(Serialize)]
pub struct Ps<'a> {
    pub containers: Vec<ContainerRow<'a>>,
}

/// A container as its agent describes it, and the host it is on.
#[derive(Serialize)]
pub struct ContainerRow<'a> {
    pub host: &'a str,
    #[serde(flatten)]
    pub container: &'a ContainerInfo,
}

// --- tern check, and migrate's refusal ------------------------------------------

/// `tern check --json`.
#[derive(Serialize)]
pub struct Check<'a> {
    pub container: &'a str,
    pub source: &'a str,
    pub target: &'a str,
    #[serde(serialize_with = "mode_name")]
    pub mode: Mode,
    pub mode_note: &'a str,
    /// No blocking finding: `tern migrate` would proceed.
    pub ok: bool,
    #[serde(serialize_with = "findings")]
    pub findings: &'a [Finding],
    /// The fields whose refusal `--force-compat` lifted (their findings
    /// read `"severity": "forced"`).
    pub forced: Vec<&'a str>,
    /// The source agent's cap on its outgoing migration traffic ([`cap`]).
    #[serde(serialize_with = "cap")]
    pub bandwidth: u64,
}

/// A bandwidth cap: `null` for none, else `{"bytes_per_s", "mbit_per_s"}`.
fn cap<S: Serializer>(bytes_per_s: &u64, ser: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Rate {
        bytes_per_s: u64,
        mbit_per_s: f64,
    }
    match *bytes_per_s {
        0 => ser.serialize_none(),
        b => ser.serialize_some(&Rate { bytes_per_s: b, mbit_per_s: (b as f64 * 8e-6 * 1000.0).round() / 1000.0 }),
    }
}

/// `tern migrate --json` refused by the check before anything was frozen.
#[derive(Serialize)]
pub struct Refused<'a> {
    pub container: &'a str,
    pub source: &'a str,
    pub target: &'a str,
    #[serde(serialize_with = "mode_name")]
    pub mode: Mode,
    /// Always `"refused"`, as in a report.
    pub outcome: &'static str,
    pub running_on: &'a str,
    /// The blocking findings.
    #[serde(serialize_with = "findings")]
    pub findings: &'a [Finding],
}

#[derive(Serialize)]
#[serde(remote = "Finding")]
struct FindingDef {
    field: String,
    source: String,
    target: String,
    #[serde(serialize_with = "severity_word")]
    severity: Severity,
    note: String,
}

fn severity_word<S: Serializer>(s: &Severity, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(match s {
        Severity::Block => "block",
        Severity::Forced => "forced",
        Severity::Warn => "warn",
        _ => "ok",
    })
}

fn findings<S: Serializer>(f: &[Finding], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(f.iter().map(FindingJson))
}

// --- tern migrate ---------------------------------------------------------------

/// `tern migrate --json`: the source agent's report. `outcome`,
/// `running_on`, `failure` and `rollback_error` say what the report's
/// `Outcome` says; every other field is the report's own.
#[derive(Serialize)]
pub struct Report<'a> {
    #[serde(flatten)]
    fields: ReportJson<'a>,
    outcome: &'static str,
    /// Where the container runs now ("" when the rollback failed too).
    running_on: &'a str,
    #[serde(serialize_with = "failure")]
    failure: Option<&'a Failure>,
    rollback_error: Option<&'a str>,
    /// The check's refusals `--force-compat` lifted for this move.
    #[serde(serialize_with = "findings")]
    forced: &'a [Finding],
}

impl<'a> Report<'a> {
    pub fn new(r: &'a MigrationReport, forced: &'a [Finding]) -> Self {
        let (failure, rollback_error) = match &r.outcome {
            Outcome::Refused { failure } | Outcome::RolledBack { failure } => (Some(failure), None),
            Outcome::Failed { failure, rollback_error } | Outcome::Undecided { failure, detail: rollback_error } => {
                (Some(failure), Some(rollback_error.as_str()))
            }
            _ => (None, None),
        };
        let running_on = match r.outcome {
            Outcome::Completed => &r.target,
            Outcome::Failed { .. } | Outcome::Undecided { .. } => "",
            _ => &r.source,
        };
        Report { fields: ReportJson(r), outcome: crate::output::outcome_word(&r.outcome), running_on, failure, rollback_error, forced }
    }
}

#[derive(Serialize)]
#[serde(remote = "MigrationReport")]
struct ReportDef {
    id: MigrationId,
    container: String,
    source: String,
    target: String,
    #[serde(serialize_with = "mode_name")]
    mode: Mode,
    /// Shown by [`Report`]'s own fields.
    #[serde(skip)]
    outcome: Outcome,
    downtime_ms: Option<u64>,
    total_ms: u64,
    bytes_on_wire: u64,
    image_bytes: u64,
    checkpoint_bytes: u64,
    final_pages: u64,
    final_frozen_ms: u64,
    saved_bytes: u64,
    zstd_in: u64,
    zstd_out: u64,
    #[serde(serialize_with = "phase_times")]
    phases: Vec<PhaseTime>,
    /// `[{"step": "criu-dump", "ms": 120}, ...]`, summing to `downtime_ms`.
    #[serde(serialize_with = "step_times")]
    frozen: Vec<StepTime>,
    memory_fill_ms: Option<u64>,
    images_in_ram: ImagesInRam,
    rounds: Vec<RoundReport>,
    stop_reason: Option<String>,
    warnings: Vec<String>,
    /// The cap the migration ran under ([`cap`]).
    #[serde(serialize_with = "cap")]
    bandwidth: u64,
    throttled_ms: u64,
}

#[derive(Serialize)]
#[serde(remote = "PhaseTime")]
struct PhaseTimeDef {
    #[serde(serialize_with = "phase_name")]
    phase: Phase,
    ms: u64,
}

#[derive(Serialize)]
#[serde(remote = "Failure")]
struct FailureDef {
    #[serde(serialize_with = "phase_name")]
    phase: Phase,
    message: String,
}

fn mode_name<S: Serializer>(m: &Mode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(m.as_str())
}

fn phase_name<S: Serializer>(p: &Phase, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(p.as_str())
}

fn phase_times<S: Serializer>(p: &[PhaseTime], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(p.iter().map(PhaseTimeJson))
}

fn step_times<S: Serializer>(p: &[StepTime], ser: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Step {
        step: &'static str,
        ms: u64,
    }
    ser.collect_seq(p.iter().map(|s| Step { step: s.step.as_str(), ms: s.ms }))
}

fn failure<S: Serializer>(f: &Option<&Failure>, ser: S) -> Result<S::Ok, S::Error> {
    match f {
        Some(f) => ser.serialize_some(&FailureJson(f)),
        None => ser.serialize_none(),
    }
}

/// A borrowed wire value serialized through its remote mirror.
macro_rules! via_mirror {
    ($($json:ident($t:ty) => $def:ident),* $(,)?) => {$(
        struct $json<'a>(&'a $t);

        impl Serialize for $json<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                $def::serialize(self.0, ser)
            }
        }
    )*};
}
via_mirror!(ReportJson(MigrationReport) => ReportDef, PhaseTimeJson(PhaseTime) => PhaseTimeDef, FailureJson(Failure) => FailureDef, FindingJson(Finding) => FindingDef);

// --- tern evacuate --------------------------------------------------------------

/// `tern evacuate --json`: the plan, and what became of each move.
#[derive(Serialize)]
pub struct Evacuate<'a> {
    pub host: &'a str,
    pub targets: &'a [String],
    /// `refused`, `dry-run`, `completed` or `partial`.
    pub outcome: &'static str,
    /// The host was cordoned first (every evacuation but a dry run).
    pub cordoned: bool,
    /// At most this many moves ran at once.
    pub parallel: usize,
    pub plan: Vec<PlannedMove<'a>>,
    pub stuck: Vec<Stuck<'a>>,
    pub not_running: &'a [String],
    pub unreachable_targets: &'a [String],
    pub moves: Vec<Move<'a>>,
}

#[derive(Serialize)]
pub struct PlannedMove<'a> {
    pub container: &'a str,
    pub target: &'a str,
    pub mode: Option<&'a str>,
    pub memory_bytes: u64,
}

/// A container no target accepts, and each target's reasons.
#[derive(Serialize)]
pub struct Stuck<'a> {
    pub container: &'a str,
    pub reasons: Option<&'a [String]>,
}

/// One move of an evacuation: its report, or why there is none.
#[derive(Serialize)]
pub struct Move<'a> {
    pub container: &'a str,
    pub target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report<'a>>,
    /// `not-started` (cancelled) or `not-moved` (failed before a report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

// --- tern return ----------------------------------------------------------------

/// `tern return --json`: what the host's record held, what moves back,
/// what is skipped and why, and what became of each move.
#[derive(Serialize)]
pub struct Return<'a> {
    pub host: &'a str,
    /// `refused`, `dry-run`, `completed` or `partial`.
    pub outcome: &'static str,
    /// Containers the host's evacuation record held.
    pub recorded: usize,
    /// The host was uncordoned at the end (every move tried completed).
    pub uncordoned: bool,
    /// At most this many moves ran at once.
    pub parallel: usize,
    pub plan: Vec<ReturnPlanned<'a>>,
    pub skipped: Vec<Skipped<'a>>,
    /// Containers that would move back but the check (or the room on the
    /// host) refuses.
    pub stuck: Vec<Stuck<'a>>,
    pub moves: Vec<ReturnMove<'a>>,
}

#[derive(Serialize)]
pub struct ReturnPlanned<'a> {
    pub container: &'a str,
    pub id: &'a str,
    /// Where it runs now, as the record says.
    pub from: &'a str,
    pub mode: Option<&'a str>,
    pub memory_bytes: u64,
}

/// A recorded container that does not move back.
#[derive(Serialize)]
pub struct Skipped<'a> {
    pub container: &'a str,
    pub id: &'a str,
    /// Where the evacuation moved it.
    pub target: &'a str,
    pub reason: &'a str,
    /// Still in the host's record (a later `tern return` looks again).
    pub kept: bool,
}

/// One move back: as an evacuation's move, with where it came from.
#[derive(Serialize)]
pub struct ReturnMove<'a> {
    pub from: &'a str,
    #[serde(flatten)]
    pub mv: Move<'a>,
}

// --- tern probe, pki init, man ----------------------------------------------------

/// `tern probe --json`: the sending agent's report and the rate it makes.
#[derive(Serialize)]
pub struct Probe<'a> {
    #[serde(flatten)]
    pub report: &'a ProbeReport,
    /// Payload rate, one decimal.
    pub mbit_per_s: f64,
}

/// `tern pki revoke --json`: the serials revoked and the list rewritten.
#[derive(Serialize)]
pub struct Revoked<'a> {
    pub name: &'a str,
    pub serials: &'a [String],
    pub crl: &'a Path,
}

/// `tern pki init --json`, `tern pki issue --json` and `tern man --json`: the files written.
#[derive(Serialize)]
pub struct Written<'a> {
    pub dir: &'a Path,
    pub files: &'a [PathBuf],
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tern_proto::FrozenStep;

    fn report(outcome: Outcome) -> MigrationReport {
        MigrationReport {
            id: 7,
            container: "hog".into(),
            source: "client1".into(),
            target: "client2".into(),
            mode: Mode::HashPreCopy,
            outcome,
            downtime_ms: Some(2220),
            total_ms: 7270,
            bytes_on_wire: 341 << 20,
            image_bytes: 0,
            checkpoint_bytes: 256 << 20,
            final_pages: 65553,
            final_frozen_ms: 313,
            saved_bytes: 194 << 20,
            zstd_in: 55 << 10,
            zstd_out: 8 << 10,
            phases: vec![PhaseTime { phase: Phase::Prepare, ms: 581 }, PhaseTime { phase: Phase::PreCopy, ms: 3820 }],
            frozen: vec![StepTime { step: FrozenStep::CriuDump, ms: 313 }, StepTime { step: FrozenStep::Other, ms: 1907 }],
            memory_fill_ms: Some(429),
            images_in_ram: ImagesInRam { source: true, target: false },
            rounds: vec![RoundReport {
                round: 1,
                pages: 65553,
                bytes: 256 << 20,
                dump_ms: 3340,
                frozen_ms: 418,
                transfer_ms: 3820,
                duration_ms: 3820,
                dirty_pages_per_s: 0,
            }],
            stop_reason: Some("the base dump is on the target".into()),
            warnings: vec!["tcp connections: reset".into()],
            bandwidth: 25_000_000,
            throttled_ms: 3210,
        }
    }

    fn rolled_back() -> Outcome {
        Outcome::RolledBack { failure: Failure { phase: Phase::Restore, message: "criu said no".into() } }
    }

    #[test]
    fn every_document_carries_the_schema_first() {
        let r = report(Outcome::Completed);
        let text = serde_json::to_string(&Doc::ok(Report::new(&r, &[]))).unwrap();
        assert!(text.starts_with(r#"{"schema":1,"#), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v.get("error").is_none() && v.get("exit_code").is_none(), "{v}");
        let hosts = value(&Doc::ok(Hosts { hosts: vec![] }));
        assert_eq!(hosts, json!({"schema": 1, "hosts": []}));
        let ps = value(&Doc::ok(Ps { containers: vec![] }));
        assert_eq!(ps, json!({"schema": 1, "containers": []}));
    }

    #[test]
    fn a_report_keeps_the_names_and_nesting_scripts_read() {
        let r = report(Outcome::Completed);
        let v = value(&Report::new(&r, &[]));
        assert_eq!(v["mode"], "hash-pre-copy");
        assert_eq!(v["outcome"], "completed");
        assert_eq!(v["running_on"], "client2");
        assert_eq!(v["failure"], Value::Null);
        assert_eq!(v["rollback_error"], Value::Null);
        assert_eq!(v["phases"], json!([{"phase": "prepare", "ms": 581}, {"phase": "pre-copy", "ms": 3820}]));
        assert_eq!(v["frozen"], json!([{"step": "criu-dump", "ms": 313}, {"step": "other", "ms": 1907}]));
        assert_eq!(v["images_in_ram"], json!({"source": true, "target": false}));
        assert_eq!(
            v["rounds"][0],
            json!({"round": 1, "pages": 65553, "bytes": 256 << 20, "dump_ms": 3340, "frozen_ms": 418, "transfer_ms": 3820,
                   "duration_ms": 3820, "dirty_pages_per_s": 0})
        );
        for (k, want) in [("id", json!(7)), ("downtime_ms", json!(2220)), ("memory_fill_ms", json!(429)), ("saved_bytes", json!(194 << 20))] {
            assert_eq!(v[k], want, "{k}");
        }
        assert_eq!(v["warnings"], json!(["tcp connections: reset"]));
        assert_eq!(v["bandwidth"], json!({"bytes_per_s": 25_000_000, "mbit_per_s": 200.0}));
        assert_eq!(v["throttled_ms"], 3210);
        let uncapped = MigrationReport { bandwidth: 0, ..r };
        assert_eq!(value(&Report::new(&uncapped, &[]))["bandwidth"], Value::Null);
    }

    /// The mirror lists every field the wire's report has: one added to
    /// `MigrationReport` and not here fails this test.
    #[test]
    fn the_report_mirror_misses_no_field() {
        let r = report(rolled_back());
        let derived = serde_json::to_value(&r).unwrap();
        let shown = value(&Report::new(&r, &[]));
        for key in derived.as_object().unwrap().keys() {
            assert!(shown.get(key).is_some(), "{key} is missing from the --json report");
        }
        let f = Finding { field: "kernel".into(), source: "6.1".into(), target: "6.1".into(), severity: Severity::Ok, note: String::new() };
        let derived = serde_json::to_value(&f).unwrap();
        let shown = value(&Check {
            container: "c",
            source: "a",
            target: "b",
            mode: Mode::StopAndCopy,
            mode_note: "",
            ok: true,
            findings: std::slice::from_ref(&f),
            forced: vec![],
            bandwidth: 62_500_000,
        });
        assert_eq!(shown["bandwidth"]["mbit_per_s"], 500.0);
        for key in derived.as_object().unwrap().keys() {
            assert!(shown["findings"][0].get(key).is_some(), "{key} is missing from a --json finding");
        }
    }

    #[test]
    fn a_rolled_back_migration_is_a_failure_document_with_its_report() {
        let r = report(rolled_back());
        let doc = value(&Doc::failed("restore failed: criu said no".into(), 1, Some(Report::new(&r, &[]))));
        assert_eq!(doc["schema"], 1);
        assert_eq!(doc["error"], "restore failed: criu said no");
        assert_eq!(doc["exit_code"], 1);
        assert_eq!(doc["outcome"], "rolled-back");
        assert_eq!(doc["running_on"], "client1");
        assert_eq!(doc["failure"], json!({"phase": "restore", "message": "criu said no"}));
        let failed = Outcome::Failed { failure: Failure { phase: Phase::Restore, message: "x".into() }, rollback_error: "y".into() };
        let r = report(failed);
        let v = value(&Report::new(&r, &[]));
        assert_eq!((v["outcome"].as_str(), v["running_on"].as_str(), v["rollback_error"].as_str()), (Some("failed"), Some(""), Some("y")));
    }

    #[test]
    fn a_failure_without_a_partial_view_is_the_error_alone() {
        let doc = value(&Doc::<Value>::failed("no hosts inventory found".into(), 2, None));
        assert_eq!(doc, json!({"schema": 1, "error": "no hosts inventory found", "exit_code": 2}));
    }

    #[test]
    fn findings_read_lowercase() {
        let f = vec![
            Finding { field: "criu".into(), source: "4.2".into(), target: "3.17".into(), severity: Severity::Block, note: "too old".into() },
            Finding { field: "kernel".into(), source: "6.1".into(), target: "6.1".into(), severity: Severity::Warn, note: String::new() },
        ];
        let v = value(&Refused {
            container: "c",
            source: "client1",
            target: "client2",
            mode: Mode::StopAndCopy,
            outcome: "refused",
            running_on: "client1",
            findings: &f,
        });
        assert_eq!(v["mode"], "stop-and-copy");
        assert_eq!(v["findings"][0], json!({"field": "criu", "source": "4.2", "target": "3.17", "severity": "block", "note": "too old"}));
        assert_eq!(v["findings"][1]["severity"], "warn");
    }

    #[test]
    fn a_forced_refusal_reads_forced_in_the_check_and_the_report() {
        let f = vec![Finding {
            field: "podman".into(),
            source: "5.4.2".into(),
            target: "4.3.1".into(),
            severity: Severity::Forced,
            note: "Podman 4 drops ...".into(),
        }];
        let v = value(&Check {
            container: "c",
            source: "client1",
            target: "client2",
            mode: Mode::StopAndCopy,
            mode_note: "as asked",
            ok: true,
            findings: &f,
            forced: vec!["podman"],
            bandwidth: 0,
        });
        assert_eq!(v["findings"][0]["severity"], "forced");
        assert_eq!(v["forced"], json!(["podman"]));
        let r = report(Outcome::Completed);
        let v = value(&Report::new(&r, &f));
        assert_eq!(
            v["forced"][0],
            json!({"field": "podman", "source": "5.4.2", "target": "4.3.1", "severity": "forced", "note": "Podman 4 drops ..."})
        );
        assert_eq!(value(&Report::new(&r, &[]))["forced"], json!([]));
    }

    #[test]
    fn an_evacuation_nests_each_report() {
        let r = report(Outcome::Completed);
        let targets = vec!["client2".to_string()];
        let none: Vec<String> = vec![];
        let reasons = vec!["client2: name clash".to_string()];
        let v = value(&Doc::failed(
            "client1 is NOT empty".into(),
            1,
            Some(Evacuate {
                host: "client1",
                targets: &targets,
                outcome: "partial",
                cordoned: true,
                parallel: 2,
                plan: vec![PlannedMove { container: "hog", target: "client2", mode: Some("hash-pre-copy"), memory_bytes: 1 }],
                stuck: vec![Stuck { container: "stuck", reasons: Some(&reasons) }],
                not_running: &none,
                unreachable_targets: &none,
                moves: vec![
                    Move { container: "hog", target: "client2", report: Some(Report::new(&r, &[])), outcome: None, error: None },
                    Move { container: "b", target: "client2", report: None, outcome: Some("not-moved"), error: Some("lost contact") },
                ],
            }),
        ));
        assert_eq!((v["schema"].as_u64(), v["exit_code"].as_u64(), v["outcome"].as_str()), (Some(1), Some(1), Some("partial")));
        assert_eq!(v["moves"][0]["report"]["outcome"], "completed");
        assert!(v["moves"][0]["report"].get("schema").is_none(), "only the document has a schema");
        assert_eq!(v["moves"][1], json!({"container": "b", "target": "client2", "outcome": "not-moved", "error": "lost contact"}));
        assert_eq!(v["stuck"][0], json!({"container": "stuck", "reasons": ["client2: name clash"]}));
    }

    #[test]
    fn a_cordon_reads_with_its_reason_and_time() {
        let c = tern_proto::facts::Cordon { reason: "kernel upgrade".into(), since_unix: 86_400 };
        let change = tern_proto::CordonChange { was: None, now: Some(c) };
        let v = value(&Doc::ok(CordonState::new("client2", &change)));
        assert_eq!(
            v,
            json!({"schema": 1, "host": "client2", "cordoned": true, "was_cordoned": false,
                   "cordon": {"reason": "kernel upgrade", "since_unix": 86_400, "since": "1970-01-02 00:00:00 UTC"}})
        );
        let change = tern_proto::CordonChange { was: change.now.clone(), now: None };
        let v = value(&CordonState::new("client2", &change));
        assert_eq!((v["cordoned"].as_bool(), v["was_cordoned"].as_bool(), v["cordon"].is_null()), (Some(false), Some(true), true));
    }

    #[test]
    fn a_probe_is_the_agent_report_and_its_rate() {
        let p = ProbeReport { from: "a".into(), to: "b".into(), bytes: 1, ms: 2, bytes_on_wire: 3, lost_packets: 4, rtt_us: 5 };
        let v = value(&Doc::ok(Probe { report: &p, mbit_per_s: 951.2 }));
        assert_eq!(
            v,
            json!({"schema": 1, "from": "a", "to": "b", "bytes": 1, "ms": 2, "bytes_on_wire": 3, "lost_packets": 4, "rtt_us": 5,
                   "mbit_per_s": 951.2})
        );
    }
}
