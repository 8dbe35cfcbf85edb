//! [`LeaderRouter`]: a loopback TCP forwarder whose upstream is always Gold's
//! *current leader's* PostgreSQL, like a Kubernetes Service selecting the pod
//! labelled master. Put a [`FaultProxy`](crate::support::proxy::FaultProxy)
//! in front of it to model the Transport Service:
//! `FaultProxy::start(router.addr())`.
//!
//! It asks every member's Patroni `GET /primary` every 200 ms (200 = holds the
//! leader key and runs a primary) and dials the leader on each new
//! connection. When the leader changes, or the current one says it is no
//! longer primary, or its REST API has not answered 3 polls in a row (a dead
//! member; one slow answer on a busy machine is not enough), every connection
//! routed to it is cut. With no leader, a new connection is reset at once, as
//! a Service with no endpoints rejects it. The bytes are copied by the fault
//! proxy's own `forward`, so the harness has one forwarding implementation.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::gold_cluster::GoldCluster;
use crate::support::proxy::forward;

/// How often each member's `/primary` is asked.
pub const POLL: Duration = Duration::from_millis(200);
/// Polls in a row without an answer before the leader counts as gone.
const MISSES_UNTIL_GONE: u32 = 3;

/// One Gold member as the router sees it.
#[derive(Clone, Copy, Debug)]
pub struct RouteMember {
    /// Patroni REST API.
    pub api: SocketAddr,
    /// PostgreSQL.
    pub pg: SocketAddr,
}

pub struct LeaderRouter {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    members: Vec<RouteMember>,
    state: Mutex<State>,
    accepted: AtomicU64,
    switches: AtomicU64,
    /// Cancelled on drop; parent of every connection's token.
    shutdown: CancellationToken,
}

struct State {
    leader: Option<usize>,
    /// The current leader's polls in a row without an answer.
    misses: u32,
    /// Cancelled to cut every connection routed to the current leader.
    routed: CancellationToken,
}

enum Poll {
    Primary,
    NotPrimary,
    NoAnswer,
}

impl LeaderRouter {
    /// Routes to `gold`'s leader (see [`start_for`](Self::start_for)).
    pub async fn start(gold: &GoldCluster) -> LeaderRouter {
        let members: Vec<RouteMember> = (0..gold.members())
            .map(|i| RouteMember {
                api: gold.member_api_addr(i),
                pg: gold.member_pg_addr(i),
            })
            .collect();
        Self::start_for(members).await
    }

    /// Listens on 127.0.0.1:<random>, polls the members once (so a leader
    /// that is up is routed to from the first connection on), then keeps
    /// polling in the background until dropped.
    pub async fn start_for(members: Vec<RouteMember>) -> LeaderRouter {
        assert!(!members.is_empty(), "a router needs members");
        for m in &members {
            assert!(
                m.api.ip().is_loopback() && m.pg.ip().is_loopback(),
                "LeaderRouter only routes on loopback, not {m:?}"
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind leader router on 127.0.0.1:0");
        let addr = listener.local_addr().expect("leader router local addr");
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            members,
            state: Mutex::new(State {
                leader: None,
                misses: 0,
                routed: shutdown.child_token(),
            }),
            accepted: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            shutdown,
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("build HTTP client");
        shared.poll_once(&http).await;
        tokio::spawn(Arc::clone(&shared).poll_loop(http));
        tokio::spawn(Arc::clone(&shared).accept_loop(listener));
        LeaderRouter { shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// Index of the member new connections go to, if any.
    pub fn leader(&self) -> Option<usize> {
        self.shared.state.lock().unwrap().leader
    }

    /// PostgreSQL address of that member.
    pub fn leader_addr(&self) -> Option<SocketAddr> {
        self.leader().map(|i| self.shared.members[i].pg)
    }

    /// How often the route changed (to another member, or to none).
    pub fn switches(&self) -> u64 {
        self.shared.switches.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (routed or reset).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the route goes to member `i`; panics after `timeout`.
    pub async fn wait_for_leader(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.leader() != Some(i) {
            assert!(
                Instant::now() < deadline,
                "router still routes to {:?}, not member {i}, after {timeout:?}",
                self.leader()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LeaderRouter {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Shared {
    async fn poll_loop(self: Arc<Self>, http: reqwest::Client) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.poll_once(&http) => {}
            }
        }
    }

    async fn poll_once(&self, http: &reqwest::Client) {
        let polls = self.members.iter().map(|m| async move {
            match http.get(format!("http://{}/primary", m.api)).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => Poll::Primary,
                Ok(_) => Poll::NotPrimary,
                Err(_) => Poll::NoAnswer,
            }
        });
        let polls = futures::future::join_all(polls).await;
        let first_primary = polls.iter().position(|p| matches!(p, Poll::Primary));

        let mut state = self.state.lock().unwrap();
        let next = match state.leader {
            Some(current) => match polls[current] {
                Poll::Primary => {
                    state.misses = 0;
                    Some(current)
                }
                Poll::NotPrimary => first_primary,
                Poll::NoAnswer => {
                    state.misses += 1;
                    if state.misses < MISSES_UNTIL_GONE {
                        Some(current)
                    } else {
                        first_primary
                    }
                }
            },
            None => first_primary,
        };
        if next != state.leader {
            state.routed.cancel();
            state.routed = self.shutdown.child_token();
            state.leader = next;
            state.misses = 0;
            self.switches.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let stream = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // E.g. EMFILE: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            self.accepted.fetch_add(1, Ordering::SeqCst);
            // The route and its token together, so a switch cannot leave
            // this connection on the old leader.
            let route = {
                let state = self.state.lock().unwrap();
                state.leader.map(|i| (self.members[i].pg, state.routed.clone()))
            };
            match route {
                Some((upstream, cut)) => {
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = forward(stream, upstream, None) => {}
                        }
                    });
                }
                None => {
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
            }
        }
    }
}
