//! A fault-injecting TCP proxy on loopback, standing in for the cross-cluster
//! tunnel between the watchdog and Gold.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Plain bidirectional forwarding to the upstream.
    Forward,
    /// The port is closed: connecting fails with "connection refused".
    Refuse,
    /// Connections are accepted but nothing ever comes back.
    Blackhole,
    /// Connections are accepted and immediately reset (RST).
    Reset,
    /// Like `Forward`, but every chunk, in both directions, is held back this long.
    Delay(Duration),
}

impl Fault {
    fn forwards(self) -> bool {
        matches!(self, Fault::Forward | Fault::Delay(_))
    }
}

pub struct FaultProxy {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Held across a whole `set`, so mode switches (and listener re-binds) are serialized.
    acceptor: tokio::sync::Mutex<Option<Acceptor>>,
    accepted: AtomicU64,
    open: AtomicUsize,
    /// Cancelled when the proxy is dropped; parent of every other token.
    shutdown: CancellationToken,
}

struct State {
    fault: Fault,
    /// Cancelled to cut every forwarded (or delayed) connection.
    forwarded: CancellationToken,
    /// Cancelled to cut every blackholed connection.
    blackholed: CancellationToken,
}

struct Acceptor {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding 127.0.0.1:<random port> to `upstream` (which must be loopback).
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "FaultProxy only forwards to loopback addresses, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy local addr");
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            upstream,
            state: Mutex::new(State {
                fault: Fault::Forward,
                forwarded: shutdown.child_token(),
                blackholed: shutdown.child_token(),
            }),
            acceptor: tokio::sync::Mutex::new(None),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            shutdown,
        });
        *shared.acceptor.lock().await = Some(shared.spawn_acceptor(listener));
        FaultProxy { shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    pub fn fault(&self) -> Fault {
        self.shared.state.lock().unwrap().fault
    }

    /// Switches the mode; it is in force when this returns (for `Refuse`
    /// the port is closed, otherwise it is listening again). Leaving
    /// `Forward`/`Delay` cuts the forwarded connections; leaving `Blackhole`
    /// cuts the blackholed ones.
    pub async fn set(&self, fault: Fault) {
        self.shared.set(fault).await;
    }

    /// Alternates `Refuse` and `Forward` (starting with `Forward`) every
    /// `period` until the handle is dropped or stopped, then leaves `Forward`.
    pub fn flap(&self, period: Duration) -> FlapHandle {
        let shared = Arc::clone(&self.shared);
        let stop = self.shared.shutdown.child_token();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                shared.set(Fault::Forward).await;
                let mut refuse = false;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(period) => {}
                    }
                    refuse = !refuse;
                    let fault = if refuse { Fault::Refuse } else { Fault::Forward };
                    shared.set(fault).await;
                }
                shared.set(Fault::Forward).await;
            }
        });
        FlapHandle {
            stop,
            task: Some(task),
        }
    }

    /// Connections accepted so far, in every mode.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Forwarded, delayed or blackholed connections currently open. A cut
    /// connection leaves this count shortly after the cut, not at once.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Stops the flapping started by [`FaultProxy::flap`] when dropped.
pub struct FlapHandle {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FlapHandle {
    /// Stops flapping and waits until the proxy is back to `Forward`.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FlapHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else { return };
        // Wait for the switch back to Forward so the caller can rely on it
        // right after the drop. A current-thread runtime cannot block here;
        // there the task finishes on its own shortly after.
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| {
                let _ = handle.block_on(task);
            });
        }
    }
}

impl Shared {
    async fn set(self: &Arc<Self>, fault: Fault) {
        let mut acceptor = self.acceptor.lock().await;
        if self.shutdown.is_cancelled() {
            return;
        }
        {
            let mut state = self.state.lock().unwrap();
            state.fault = fault;
            if !fault.forwards() {
                state.forwarded.cancel();
                state.forwarded = self.shutdown.child_token();
            }
            if fault != Fault::Blackhole {
                state.blackholed.cancel();
                state.blackholed = self.shutdown.child_token();
            }
        }
        match (fault, acceptor.take()) {
            (Fault::Refuse, Some(running)) => {
                // Dropping the listener closes the port, so the kernel answers
                // connection attempts (and anything still queued) with RST.
                running.stop.cancel();
                let _ = running.task.await;
            }
            (Fault::Refuse, None) => {}
            (_, Some(running)) => *acceptor = Some(running),
            (_, None) => {
                let listener = self.rebind().await;
                *acceptor = Some(self.spawn_acceptor(listener));
            }
        }
    }

    async fn rebind(&self) -> TcpListener {
        let mut last_err = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return listener,
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fault proxy could not re-bind {}: {last_err:?}", self.addr);
    }

    fn spawn_acceptor(self: &Arc<Self>, listener: TcpListener) -> Acceptor {
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(Arc::clone(self).accept_loop(listener, stop.clone()));
        Acceptor { stop, task }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
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
            // Read the mode and its token together so that a concurrent `set`
            // cannot leave this connection alive under the wrong mode.
            let (fault, cut) = {
                let state = self.state.lock().unwrap();
                let cut = match state.fault {
                    Fault::Blackhole => state.blackholed.clone(),
                    _ => state.forwarded.clone(),
                };
                (state.fault, cut)
            };
            match fault {
                // Refuse only shows up here when racing with the listener's close.
                Fault::Refuse | Fault::Reset => {
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
                Fault::Blackhole => {
                    let open = OpenGuard::new(&self);
                    tokio::spawn(async move {
                        let _open = open;
                        blackhole(stream, cut).await;
                    });
                }
                Fault::Forward | Fault::Delay(_) => {
                    let open = OpenGuard::new(&self);
                    let upstream = self.upstream;
                    let delay = match fault {
                        Fault::Delay(d) => Some(d),
                        _ => None,
                    };
                    tokio::spawn(async move {
                        let _open = open;
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = forward(stream, upstream, delay) => {}
                        }
                    });
                }
            }
        }
    }
}

struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Swallows whatever the client sends and never answers; ends when the
/// client goes away or the connection is cut.
async fn blackhole(mut stream: TcpStream, cut: CancellationToken) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            _ = cut.cancelled() => return,
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// Connects to `upstream` and copies both ways until either side closes
/// (every chunk held back `delay` if set). Shared by [`FaultProxy`] and
/// [`LeaderRouter`](crate::support::leader_router::LeaderRouter), so the
/// harness has one forwarding implementation.
pub(crate) async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    delay: Option<Duration>,
) -> io::Result<()> {
    // If the upstream is down the client just sees its connection closed,
    // as through a tunnel whose far end is gone.
    let mut server = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    match delay {
        None => tokio::io::copy_bidirectional(&mut client, &mut server)
            .await
            .map(drop),
        Some(delay) => {
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            tokio::try_join!(
                delayed_copy(client_read, server_write, delay),
                delayed_copy(server_read, client_write, delay),
            )
            .map(drop)
        }
    }
}

async fn delayed_copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        tokio::time::sleep(delay).await;
        to.write_all(&buf[..n]).await?;
    }
}
