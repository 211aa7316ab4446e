//! Host maintenance: `tern cordon` and `tern uncordon`. The cordon is the
//! host agent's to keep (`agent/src/cordon.rs`): this only asks for it,
//! so it holds whatever happens to this process.

use crate::command::{Ctx, Done, Exit};
use crate::inventory::Inventory;
use crate::{cluster, view};
use anyhow::anyhow;
use tern_proto::facts::Cordon;
use tern_proto::{CordonChange, CordonRequest, Request, Response};

/// The reason `tern cordon` records when none is given.
pub const DEFAULT_REASON: &str = "tern cordon";

/// Asks `host`'s agent to cordon (`Some(reason)`) or uncordon (`None`) it.
pub async fn set_cordon(inv: &Inventory, host: &str, cordon: Option<String>) -> Result<CordonChange, Exit> {
    let entry = inv.host(host).map_err(|e| Exit::new(2, e))?;
    let (_endpoint, session) = cluster::connect(inv, entry)
        .await
        .map_err(|e| Exit::new(1, anyhow!("{host} is unreachable: {e:#}; its agent keeps the cordon, so it must answer")))?;
    match session.request(&Request::Cordon(CordonRequest { cordon })).await.map_err(|e| Exit::new(1, e))? {
        Response::Cordon(change) => Ok(change),
        other => Err(Exit::new(1, session.unexpected("Cordon", &other))),
    }
}

/// With a host's evacuator certificate (`tern pki issue NAME
/// --evacuator`), `tern evacuate` and `tern return` are for that host only;
/// said here, before anything is asked (the agents refuse the rest anyway).
pub fn only_own_host(inv: &Inventory, host: &str) -> Result<(), Exit> {
    match &inv.me {
        Some(id) if id.role == tern_transport::Role::Evacuator && id.name != host => Err(Exit::new(
            2,
            anyhow!(
                "{} is {}'s evacuator certificate: it evacuates {} and brings back what left it, not {host}",
                inv.tls.cert.display(),
                id.name,
                id.name
            ),
        )),
        _ => Ok(()),
    }
}

/// What `tern cordon` / `tern uncordon` say about a change.
pub fn describe(host: &str, change: &CordonChange) -> String {
    match (&change.was, &change.now) {
        (None, Some(c)) => format!("{host} is cordoned {}: no migration lands there until `tern uncordon {host}`", c.describe()),
        (Some(c), Some(_)) => format!("{host} was already cordoned {}; unchanged", c.describe()),
        (Some(c), None) => format!("{host} is uncordoned (it was cordoned {}): migrations may land there again", c.describe()),
        (None, None) => format!("{host} was not cordoned; nothing to do"),
    }
}

/// `tern cordon HOST` and `tern uncordon HOST`.
pub async fn cordon(ctx: &Ctx, host: &str, cordon: Option<String>) -> Done {
    let inv = Inventory::load(ctx.inventory.as_deref()).map_err(|e| Exit::new(2, e))?;
    let change = set_cordon(&inv, host, cordon).await?;
    if !ctx.json {
        println!("{}", describe(host, &change));
    }
    Ok(ctx.doc(&view::CordonState::new(host, &change)))
}

/// The `cordon` column of `tern hosts`.
pub fn column(c: Option<&Cordon>) -> String {
    match c {
        Some(_) => "CORDONED".into(),
        None => "no".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_reads_as_what_happened() {
        let c = Cordon { reason: "kernel upgrade".into(), since_unix: 0 };
        let s = describe("client2", &CordonChange { was: None, now: Some(c.clone()) });
        assert_eq!(s, "client2 is cordoned since 1970-01-01 00:00:00 UTC (kernel upgrade): no migration lands there until `tern uncordon client2`");
        let s = describe("client2", &CordonChange { was: Some(c.clone()), now: Some(c.clone()) });
        assert!(s.contains("already cordoned") && s.contains("unchanged"), "{s}");
        let s = describe("client2", &CordonChange { was: Some(c), now: None });
        assert!(s.starts_with("client2 is uncordoned"), "{s}");
        assert_eq!(describe("h", &CordonChange { was: None, now: None }), "h was not cordoned; nothing to do");
    }
}
