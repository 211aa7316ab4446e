//! The post-copy fills this host serves as a source, for the operator
//! (`Request::PostCopy`, `tern post-copy`): how each stands, and the
//! orders that reach its tunnel (`source/postcopy.rs`). What an order
//! means is `tern_proto::postcopy`'s policy; this is the seam between it
//! and the running tunnels. Podman is never asked: it holds the
//! container's lock until the fill is over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_proto::postcopy::{decide, Decision, Refused};
use tern_proto::{FillLink, FillStatus, MigrationId, PostCopyAction, PostCopyRequest};
use tokio::sync::{mpsc, oneshot};

/// How long an operator's give-up waits for its tunnel to carry it out.
const ORDER_WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Fills {
    map: Mutex<HashMap<MigrationId, Shared>>,
}

struct Shared {
    status: FillStatus,
    /// CRIU's page traffic read so far, counted by the tunnel.
    bytes: Arc<AtomicU64>,
    orders: mpsc::UnboundedSender<Order>,
}

/// An operator's order to a tunnel; `done` hears when it is carried out
/// (dropped: it was not, because the link came back first).
pub struct Order {
    pub decision: Decision,
    pub done: oneshot::Sender<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("no post-copy fill of {container} is served from {host}")]
    NoFill { container: String, host: String },
    #[error("name the container to {0} (`tern post-copy resume CONTAINER`)")]
    NoContainer(&'static str),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the link to {target} came back before {container}'s move could be given up: its memory is crossing again")]
    LinkBack { container: String, target: String },
    #[error("the page tunnel of {container} did not carry the order out within {} s", ORDER_WAIT.as_secs())]
    NoAnswer { container: String },
}

/// One fill's place in the registry, held by its tunnel: it leaves the
/// registry when dropped.
pub struct Entry {
    fills: Arc<Fills>,
    id: MigrationId,
    pub bytes: Arc<AtomicU64>,
    orders: mpsc::UnboundedReceiver<Order>,
}

impl Fills {
    pub fn register(self: &Arc<Self>, id: MigrationId, container: &str, target: &str) -> Entry {
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicU64::new(0));
        let status =
            FillStatus { id, container: container.to_string(), target: target.to_string(), since_unix: now_unix(), bytes: 0, link: FillLink::Up };
        self.map.lock().unwrap().insert(id, Shared { status, bytes: bytes.clone(), orders: tx });
        Entry { fills: self.clone(), id, bytes, orders: rx }
    }

    /// Every fill, or `container`'s, as it stands.
    pub fn list(&self, container: Option<&str>) -> Vec<FillStatus> {
        let map = self.map.lock().unwrap();
        let mut v: Vec<FillStatus> = map
            .values()
            .filter(|s| container.is_none_or(|c| s.status.container == c))
            .map(|s| FillStatus { bytes: s.bytes.load(Ordering::Relaxed), ..s.status.clone() })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Carries out an operator's request; `host` names this host in errors.
    /// A give-up returns once the tunnel ended the dump.
    pub async fn act(&self, req: &PostCopyRequest, host: &str) -> Result<Vec<FillStatus>, FillError> {
        let Some(container) = req.container.as_deref() else {
            return match req.action {
                PostCopyAction::Status => Ok(self.list(None)),
                PostCopyAction::Resume => Err(FillError::NoContainer("resume a fill")),
                PostCopyAction::GiveUp | PostCopyAction::Invalid => Err(FillError::NoContainer("give a move up")),
            };
        };
        let mut sent = Vec::new();
        {
            let map = self.map.lock().unwrap();
            let mine: Vec<&Shared> = map.values().filter(|s| s.status.container == container).collect();
            if mine.is_empty() {
                return Err(FillError::NoFill { container: container.to_string(), host: host.to_string() });
            }
            for s in mine {
                match decide(&s.status.link, req.action, container, &s.status.target)? {
                    Decision::Report => {}
                    decision => {
                        tracing::warn!(id = s.status.id, container, "the operator asks the post-copy fill to {decision:?}");
                        let (done, heard) = oneshot::channel();
                        let _ = s.orders.send(Order { decision, done });
                        sent.push((decision, s.status.target.clone(), heard));
                    }
                }
            }
        }
        for (decision, target, heard) in sent {
            if decision != Decision::GiveUp {
                continue;
            }
            match tokio::time::timeout(ORDER_WAIT, heard).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(FillError::LinkBack { container: container.to_string(), target }),
                Err(_) => return Err(FillError::NoAnswer { container: container.to_string() }),
            }
        }
        Ok(self.list(Some(container)))
    }
}

impl Entry {
    pub fn set_link(&self, link: FillLink) {
        if let Some(s) = self.fills.map.lock().unwrap().get_mut(&self.id) {
            s.status.link = link;
        }
    }

    /// The operator's next order (never, once the registry is gone).
    pub async fn order(&mut self) -> Order {
        match self.orders.recv().await {
            Some(o) => o,
            None => std::future::pending().await,
        }
    }

    /// The link runs again: orders given while it was lost are void.
    pub fn link_back(&mut self) {
        while self.orders.try_recv().is_ok() {}
        self.set_link(FillLink::Up);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.fills.map.lock().unwrap().remove(&self.id);
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(container: Option<&str>, action: PostCopyAction) -> PostCopyRequest {
        PostCopyRequest { container: container.map(str::to_string), action }
    }

    #[tokio::test]
    async fn orders_reach_only_a_lost_fill_of_the_named_container() {
        let fills = Arc::new(Fills::default());
        let mut a = fills.register(1, "db", "b");
        let _b = fills.register(2, "web", "c");
        a.bytes.store(4096, Ordering::Relaxed);
        let all = fills.act(&req(None, PostCopyAction::Status), "a").await.unwrap();
        assert_eq!(all.iter().map(|s| (s.container.as_str(), s.bytes)).collect::<Vec<_>>(), [("db", 4096), ("web", 0)]);

        let e = fills.act(&req(Some("db"), PostCopyAction::GiveUp), "a").await.unwrap_err();
        assert!(e.to_string().contains("crossing to b"), "{e}");
        assert!(matches!(fills.act(&req(Some("nope"), PostCopyAction::Resume), "a").await, Err(FillError::NoFill { .. })));
        assert!(matches!(fills.act(&req(None, PostCopyAction::GiveUp), "a").await, Err(FillError::NoContainer(_))));

        a.set_link(FillLink::Stalled { since_unix: 1, error: "gone".into() });
        let now = fills.act(&req(Some("db"), PostCopyAction::Resume), "a").await.unwrap();
        assert!(matches!(now[0].link, FillLink::Stalled { .. }));
        assert_eq!(a.order().await.decision, Decision::RetryNow);

        // A give-up returns once the tunnel carried it out...
        let give_up = req(Some("db"), PostCopyAction::GiveUp);
        let (r, ()) = tokio::join!(fills.act(&give_up, "a"), async {
            let o = a.order().await;
            assert_eq!(o.decision, Decision::GiveUp);
            let _ = o.done.send(());
        });
        assert!(r.is_ok());
        // ... and fails when the link came back first.
        let (r, ()) = tokio::join!(fills.act(&give_up, "a"), async {
            tokio::task::yield_now().await;
            a.link_back();
        });
        assert!(matches!(r, Err(FillError::LinkBack { .. })), "{r:?}");
        assert!(matches!(fills.list(Some("db"))[0].link, FillLink::Up));

        drop(a);
        assert_eq!(fills.list(None).len(), 1);
    }
}
