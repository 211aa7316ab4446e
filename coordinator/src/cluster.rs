//! Talking to every agent of the inventory at once.

use crate::inventory::{HostEntry, Inventory};
use std::time::Duration;
use tern_proto::facts::{ContainerInfo, HostFacts};
use tern_proto::{Request, Response};
use tern_transport::rpc::{RpcError, Session};

/// The name this `tern` gives in Hello: its certificate's, `coordinator`,
/// or a host's name for the host's evacuator certificate (agents refuse a
/// Hello whose name is not the certificate's).
pub fn my_name(inv: &Inventory) -> String {
    inv.me.as_ref().map_or_else(|| tern_transport::pki::COORDINATOR.to_string(), |id| id.name.clone())
}

/// The endpoints this run opened, closed as it ends ([`close_all`]).
static ENDPOINTS: std::sync::Mutex<Vec<quinn::Endpoint>> = std::sync::Mutex::new(Vec::new());

fn client_endpoint(inv: &Inventory) -> anyhow::Result<quinn::Endpoint> {
    let e = tern_transport::client_endpoint(&inv.tls)?;
    ENDPOINTS.lock().unwrap().push(e.clone());
    Ok(e)
}

/// Closes every connection this run opened and waits, briefly, for the
/// agents to hear it. A connection merely dropped at exit stays open on
/// the agent until its idle timeout, and counts against the share one
/// peer may keep there: a script calling `tern` a dozen times in a few
/// seconds would be refused.
pub async fn close_all() {
    let endpoints = std::mem::take(&mut *ENDPOINTS.lock().unwrap());
    for e in &endpoints {
        e.close(0u32.into(), b"done");
    }
    for e in endpoints {
        let _ = tokio::time::timeout(Duration::from_millis(500), e.wait_idle()).await;
    }
}

/// What one host answered, or why it did not.
pub struct HostView {
    pub entry: HostEntry,
    pub state: Result<HostState, String>,
}

pub struct HostState {
    pub session: Session,
    pub facts: HostFacts,
    pub containers: Vec<ContainerInfo>,
}

pub struct Cluster {
    /// Kept so the sessions' endpoint lives as long as the survey.
    _endpoint: quinn::Endpoint,
    pub hosts: Vec<HostView>,
}

impl Cluster {
    /// Connects to every host in parallel and reads its facts and containers.
    pub async fn survey(inv: &Inventory) -> anyhow::Result<Cluster> {
        let endpoint = client_endpoint(inv)?;
        let me = my_name(inv);
        let futures = inv.hosts.iter().cloned().map(|entry| {
            let endpoint = endpoint.clone();
            let me = me.clone();
            async move {
                let limit = tern_transport::timeouts::scaled(Duration::from_secs(15));
                let state = tokio::time::timeout(limit, survey_one(&endpoint, &entry, &me))
                    .await
                    .unwrap_or_else(|_| Err(format!("{} did not answer within {} s", entry.name, limit.as_secs())));
                HostView { entry, state }
            }
        });
        let hosts = futures_join_all(futures).await;
        Ok(Cluster { _endpoint: endpoint, hosts })
    }

    pub fn get(&self, name: &str) -> Option<&HostView> {
        self.hosts.iter().find(|h| h.entry.name == name)
    }

    /// The reachable host that has `container`.
    pub fn find_container(&self, container: &str) -> Vec<&HostView> {
        self.hosts.iter().filter(|h| h.state.as_ref().is_ok_and(|s| s.containers.iter().any(|c| c.name == container))).collect()
    }
}

/// One authenticated session to one host; the endpoint must outlive it.
pub async fn connect(inv: &Inventory, entry: &HostEntry) -> anyhow::Result<(quinn::Endpoint, Session)> {
    let endpoint = client_endpoint(inv)?;
    let session = Session::connect(&endpoint, entry.address, &entry.name, &my_name(inv)).await?;
    Ok((endpoint, session))
}

async fn survey_one(endpoint: &quinn::Endpoint, entry: &HostEntry, me: &str) -> Result<HostState, String> {
    let session = Session::connect(endpoint, entry.address, &entry.name, me).await.map_err(|e| e.to_string())?;
    let facts = match session.request(&Request::Facts).await.map_err(|e| e.to_string())? {
        Response::Facts(f) => f,
        other => return Err(session.unexpected("Facts", &other).to_string()),
    };
    let containers = containers(&session).await.map_err(|e| e.to_string())?;
    Ok(HostState { session, facts, containers })
}

pub async fn containers(session: &Session) -> Result<Vec<ContainerInfo>, RpcError> {
    match session.request(&Request::Containers).await? {
        Response::Containers(c) => Ok(c),
        other => Err(session.unexpected("Containers", &other)),
    }
}

/// `join_all` without pulling in the futures crate.
pub(crate) async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("survey task panicked"));
    }
    out
}
