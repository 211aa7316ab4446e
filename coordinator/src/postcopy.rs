//! `tern post-copy`: how the post-copy fills under way stand, and the
//! operator's say over one whose link to its target is lost (the policy is
//! `tern_proto::postcopy`; the fills are their source agents'
//! `agent/src/fills.rs`). Each host is asked directly, never through
//! `tern ps`'s survey: a source's Podman holds a filling container's lock,
//! and its list would wait for the fill.

use crate::command::{Ctx, Done, Exit};
use crate::inventory::{HostEntry, Inventory};
use crate::{cluster, output};
use anyhow::anyhow;
use serde::Serialize;
use std::time::Duration;
use tern_proto::{FillLink, FillStatus, PostCopyAction, PostCopyRequest, Request, Response};

/// How long one host may take to say how its fills stand.
const ASK_LIMIT: Duration = Duration::from_secs(15);
/// How long a give-up may take on its source (it waits for the dump to end).
const ACT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
pub struct View {
    /// What was asked: `status`, `resume` or `give-up`.
    pub action: &'static str,
    pub fills: Vec<Row>,
    /// Hosts that did not answer, with why.
    pub unreachable: Vec<(String, String)>,
}

#[derive(Serialize)]
pub struct Row {
    /// The source host, which keeps the container's memory.
    pub host: String,
    pub id: u64,
    pub container: String,
    /// The host it runs on, filling its memory from `host`.
    pub target: String,
    pub since_unix: u64,
    /// CRIU's page traffic sent so far.
    pub bytes: u64,
    #[serde(serialize_with = "link_json")]
    pub link: FillLink,
}

impl Row {
    fn new(host: &str, f: FillStatus) -> Row {
        Row { host: host.to_string(), id: f.id, container: f.container, target: f.target, since_unix: f.since_unix, bytes: f.bytes, link: f.link }
    }
}

/// A fill's link for `--json`: `link` is `up`, `lost` or `stalled`, with
/// since when and why when it is not up.
fn link_json<S: serde::Serializer>(l: &FillLink, s: S) -> Result<S::Ok, S::Error> {
    let v = match l {
        FillLink::Up => serde_json::json!({ "state": "up" }),
        FillLink::Lost { since_unix, error } => serde_json::json!({ "state": "lost", "since_unix": since_unix, "error": error }),
        FillLink::Stalled { since_unix, error } => serde_json::json!({ "state": "stalled", "since_unix": since_unix, "error": error }),
        FillLink::Invalid => serde_json::json!({ "state": "invalid" }),
    };
    v.serialize(s)
}

fn action_name(a: PostCopyAction) -> &'static str {
    match a {
        PostCopyAction::Resume => "resume",
        PostCopyAction::GiveUp => "give-up",
        _ => "status",
    }
}

/// One host's answer to `req`.
async fn ask(inv: &Inventory, entry: &HostEntry, req: &PostCopyRequest, limit: Duration) -> anyhow::Result<Vec<FillStatus>> {
    let limit = tern_transport::timeouts::scaled(limit);
    let asked = async {
        let (endpoint, session) = cluster::connect(inv, entry).await?;
        let answer = match session.request(&Request::PostCopy(req.clone())).await? {
            Response::PostCopy(v) => Ok(v),
            Response::Error(e) => Err(anyhow!("{e}")),
            other => Err(session.unexpected("PostCopy", &other).into()),
        };
        // Closed, not dropped: a script that polls would otherwise leave
        // the agent a connection per call until its idle timeout.
        session.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        answer
    };
    tokio::time::timeout(limit, asked).await.map_err(|_| anyhow!("no answer within {} s", limit.as_secs()))?
}

/// `tern post-copy status|resume|give-up [CONTAINER] [--from HOST]`.
pub async fn run(ctx: &Ctx, action: PostCopyAction, container: Option<String>, from: Option<String>) -> Done {
    let inv = Inventory::load(ctx.inventory.as_deref()).map_err(|e| Exit::new(2, e))?;
    let hosts: Vec<&HostEntry> = match &from {
        Some(h) => vec![inv.host(h).map_err(|e| Exit::new(2, e))?],
        None => inv.hosts.iter().collect(),
    };
    // First where the fills are (a status request touches nothing).
    let look = PostCopyRequest { container: container.clone(), action: PostCopyAction::Status };
    let answers = cluster::futures_join_all(hosts.iter().map(|h| {
        let (inv, look, entry) = (inv.clone(), look.clone(), (*h).clone());
        async move { (entry.name.clone(), ask(&inv, &entry, &look, ASK_LIMIT).await) }
    }))
    .await;
    let mut view = View { action: action_name(action), fills: Vec::new(), unreachable: Vec::new() };
    for (host, r) in answers {
        match r {
            Ok(v) => view.fills.extend(v.into_iter().map(|f| Row::new(&host, f))),
            // A host without the fill answers an error: not worth a line.
            Err(e) if container.is_some() && e.to_string().contains("no post-copy fill") => {}
            Err(e) => view.unreachable.push((host, format!("{e:#}"))),
        }
    }
    if action != PostCopyAction::Status {
        let name = container.as_deref().unwrap_or_default();
        let sources: Vec<String> = view.fills.iter().map(|r| r.host.clone()).collect();
        let source = match sources.as_slice() {
            [one] => one.clone(),
            [] => {
                let also = if view.unreachable.is_empty() {
                    String::new()
                } else {
                    format!(" ({} did not answer: {})", view.unreachable.len(), describe_unreachable(&view.unreachable))
                };
                return Err(Exit::new(1, anyhow!("no host serves a post-copy fill of {name}{also}")).with(&view));
            }
            _ => return Err(Exit::new(2, anyhow!("{name} is filled from {}: say which with --from", sources.join(", "))).with(&view)),
        };
        let entry = inv.host(&source).map_err(|e| Exit::new(2, e))?;
        let req = PostCopyRequest { container: container.clone(), action };
        match ask(&inv, entry, &req, ACT_LIMIT).await {
            Ok(v) => view.fills = v.into_iter().map(|f| Row::new(&source, f)).collect(),
            Err(e) => return Err(Exit::new(1, anyhow!("{source}: {e:#}")).with(&view)),
        }
        if !ctx.json {
            match action {
                PostCopyAction::GiveUp => println!(
                    "{name}'s move is given up: it runs on {source} again as of its freeze; its target removes its paused copy once it hears (`tern ps` shows it)"
                ),
                _ => println!("{source} tries the link to {name}'s target again now"),
            }
        }
    }
    if !ctx.json {
        print_table(&view);
    }
    Ok(ctx.doc(&view))
}

fn describe_unreachable(u: &[(String, String)]) -> String {
    u.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; ")
}

/// The link column: how it stands, and for how long.
pub fn link_state(l: &FillLink, now: u64) -> String {
    match l {
        FillLink::Up => "up".into(),
        FillLink::Lost { since_unix, error } => format!("LOST {} s ago ({error})", now.saturating_sub(*since_unix)),
        FillLink::Stalled { since_unix, error } => format!("STALLED: lost {} s ago ({error})", now.saturating_sub(*since_unix)),
        FillLink::Invalid => "?".into(),
    }
}

fn print_table(view: &View) {
    for (h, e) in &view.unreachable {
        eprintln!("tern: {h} did not answer: {e}");
    }
    if view.fills.is_empty() {
        if view.action == "status" {
            println!("no post-copy fill is under way");
        }
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rows: Vec<Vec<String>> = view
        .fills
        .iter()
        .map(|r| {
            vec![
                r.container.clone(),
                r.host.clone(),
                r.target.clone(),
                format!("{} s", now.saturating_sub(r.since_unix)),
                output::bytes(r.bytes),
                link_state(&r.link, now),
            ]
        })
        .collect();
    print!("{}", output::table(&["container", "from", "to", "filling for", "sent", "link"], &rows));
    if let Some(r) = view.fills.iter().find(|r| !matches!(r.link, FillLink::Up)) {
        let c = &r.container;
        println!(
            "A lost link is tried again by itself. `tern post-copy resume {c}` tries now; `tern post-copy give-up {c}` runs {c} on {} again as of its freeze (what it did on {} since is lost).",
            r.host, r.target
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_the_link_state() {
        let f = FillStatus {
            id: 1,
            container: "db".into(),
            target: "b".into(),
            since_unix: 5,
            bytes: 9,
            link: FillLink::Stalled { since_unix: 7, error: "timed out".into() },
        };
        let v = serde_json::to_value(Row::new("a", f)).unwrap();
        assert_eq!(v["host"], "a");
        assert_eq!(v["link"], serde_json::json!({ "state": "stalled", "since_unix": 7, "error": "timed out" }));
    }

    #[test]
    fn the_link_column_says_how_long_it_is_lost() {
        assert_eq!(link_state(&FillLink::Up, 100), "up");
        assert_eq!(link_state(&FillLink::Lost { since_unix: 40, error: "timed out".into() }, 100), "LOST 60 s ago (timed out)");
        assert!(link_state(&FillLink::Stalled { since_unix: 0, error: "x".into() }, 700).starts_with("STALLED: lost 700 s ago"));
    }
}
