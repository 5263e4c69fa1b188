//! A fault-injecting TCP proxy on 127.0.0.1: tests put it between a client and the broker to
//! cut the network silently (no FIN, no RST, sockets left open) and heal it again, which
//! stopping the broker cannot imitate.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;

/// A forwarder whose two directions a test can freeze and resume, to fake a network partition.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Proxy {
    /// Forwards to `upstream` (e.g. "127.0.0.1:5672") from a fresh port, so tests never collide.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("proxy listener has no address");
        let shared = Arc::new(Shared {
            flow: Mutex::new(Flow::default()),
            changed: Condvar::new(),
            links: Mutex::new(HashMap::new()),
            accepted: AtomicUsize::new(0),
        });
        let upstream = upstream.to_owned();
        let accept_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener, &upstream))
            .expect("cannot spawn the proxy accept thread");
        Proxy { shared, addr }
    }

    /// The port clients must dial instead of the upstream's, so their traffic can be cut.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `base` re-pointed here, so a test keeps the suite's credentials, vhost and query.
    pub fn url(&self, base: &str) -> String {
        let (scheme, rest) = base.split_once("://").unwrap_or(("amqp", base));
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
        format!("{scheme}://{userinfo}127.0.0.1:{}{tail}", self.port())
    }

    /// Silent cut both ways (no bytes, no FIN/RST): what only heartbeats and timeouts detect.
    pub fn freeze(&self) {
        self.shared.set_frozen(Some(true), Some(true));
    }

    /// Holds upstream->client only, so a request reaches the server but its reply never arrives.
    pub fn freeze_to_client(&self) {
        self.shared.set_frozen(Some(true), None);
    }

    /// Holds client->upstream only, so requests vanish while the client still hears the upstream.
    pub fn freeze_to_upstream(&self) {
        self.shared.set_frozen(None, Some(true));
    }

    /// Heals both ways and delivers everything held, in order, as TCP does after a brief partition.
    pub fn resume(&self) {
        self.shared.set_frozen(Some(false), Some(false));
    }

    /// Connections accepted so far, so a test sees a reconnect as an event instead of guessing.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    /// Shuts every socket so nothing leaks and drop never blocks; threads then end by themselves.
    fn drop(&mut self) {
        {
            let mut links = lock(&self.shared.links);
            lock(&self.shared.flow).stopped = true;
            self.shared.changed.notify_all();
            for link in links.values() {
                link.close();
            }
            links.clear();
        }
        // The accept thread is blocked in accept(): one connection wakes it to see `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Which way bytes travel through a link.
#[derive(Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// What the test asked for: the freeze state per direction, and whether the proxy is gone.
#[derive(Default)]
struct Flow {
    to_client_frozen: bool,
    to_upstream_frozen: bool,
    stopped: bool,
}

/// State shared by the handle, the accept thread and the forwarding threads.
struct Shared {
    flow: Mutex<Flow>,
    /// Signalled whenever `flow` changes or a link closes, to wake parked forwarders.
    changed: Condvar,
    /// Open links, so Drop can close them; each removes itself when it ends.
    links: Mutex<HashMap<u64, Arc<Link>>>,
    accepted: AtomicUsize,
}

impl Shared {
    fn set_frozen(&self, to_client: Option<bool>, to_upstream: Option<bool>) {
        let mut flow = lock(&self.flow);
        if let Some(frozen) = to_client {
            flow.to_client_frozen = frozen;
        }
        if let Some(frozen) = to_upstream {
            flow.to_upstream_frozen = frozen;
        }
        self.changed.notify_all();
    }

    fn stopped(&self) -> bool {
        lock(&self.flow).stopped
    }

    /// Parks until bytes may flow in every direction in `directions`; false once the link or
    /// the proxy is closed, meaning the caller should give up.
    fn wait_flowing(&self, link: &Link, directions: &[Direction]) -> bool {
        let mut flow = lock(&self.flow);
        loop {
            if flow.stopped || link.is_closed() {
                return false;
            }
            let frozen = directions.iter().any(|direction| match direction {
                Direction::ToClient => flow.to_client_frozen,
                Direction::ToUpstream => flow.to_upstream_frozen,
            });
            if !frozen {
                return true;
            }
            flow = self
                .changed
                .wait(flow)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Ends a link for good: both sockets shut down, its other forwarder woken, registry freed.
    fn finish(&self, id: u64, link: &Link) {
        link.close();
        {
            let _flow = lock(&self.flow);
            self.changed.notify_all();
        }
        lock(&self.links).remove(&id);
    }
}

/// One proxied connection. The upstream socket is opened only once the network is not frozen,
/// since a real cut would not let the TCP handshake through either.
struct Link {
    client: TcpStream,
    upstream: OnceLock<TcpStream>,
    closed: Mutex<bool>,
}

impl Link {
    fn is_closed(&self) -> bool {
        *lock(&self.closed)
    }

    fn close(&self) {
        let mut closed = lock(&self.closed);
        if !*closed {
            *closed = true;
            let _ = self.client.shutdown(Shutdown::Both);
            if let Some(upstream) = self.upstream.get() {
                let _ = upstream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Installs the upstream socket unless the link was closed meanwhile (then it is shut down,
    /// so a concurrent Drop cannot miss it).
    fn attach(&self, upstream: TcpStream) -> bool {
        let closed = lock(&self.closed);
        if *closed {
            let _ = upstream.shutdown(Shutdown::Both);
            return false;
        }
        self.upstream.set(upstream).is_ok()
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, upstream: &str) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let link = Arc::new(Link {
            client,
            upstream: OnceLock::new(),
            closed: Mutex::new(false),
        });
        {
            let mut links = lock(&shared.links);
            if shared.stopped() {
                link.close();
                return;
            }
            links.insert(id, Arc::clone(&link));
        }
        let (up_shared, up_link, upstream) =
            (Arc::clone(shared), Arc::clone(&link), upstream.to_owned());
        let spawned = thread::Builder::new()
            .name(format!("proxy-{id}-up"))
            .spawn(move || connect_and_forward(&up_shared, id, up_link, &upstream));
        if spawned.is_err() {
            shared.finish(id, &link);
        }
    }
}

/// Runs the client->upstream side of a link, after opening the upstream socket and starting
/// the upstream->client side.
fn connect_and_forward(shared: &Arc<Shared>, id: u64, link: Arc<Link>, upstream: &str) {
    let both = [Direction::ToUpstream, Direction::ToClient];
    if !shared.wait_flowing(&link, &both) {
        return shared.finish(id, &link);
    }
    let stream = match TcpStream::connect(upstream) {
        Ok(stream) => stream,
        Err(_) => return shared.finish(id, &link),
    };
    let _ = stream.set_nodelay(true);
    if !link.attach(stream) {
        return shared.finish(id, &link);
    }
    let (down_shared, down_link) = (Arc::clone(shared), Arc::clone(&link));
    let spawned = thread::Builder::new()
        .name(format!("proxy-{id}-down"))
        .spawn(move || forward(&down_shared, id, &down_link, Direction::ToClient));
    if spawned.is_err() {
        return shared.finish(id, &link);
    }
    forward(shared, id, &link, Direction::ToUpstream);
}

/// Copies one direction. It reads only while that direction flows, so a frozen direction holds
/// at most one buffer here and TCP flow control pushes back on the sender, as a real cut would.
fn forward(shared: &Shared, id: u64, link: &Link, direction: Direction) {
    let upstream = link
        .upstream
        .get()
        .expect("forwarding before upstream attached");
    let (mut source, mut sink) = match direction {
        Direction::ToUpstream => (&link.client, upstream),
        Direction::ToClient => (upstream, &link.client),
    };
    let mut buffer = [0u8; 16 * 1024];
    while shared.wait_flowing(link, &[direction]) {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // A freeze may have begun while this thread was blocked in read: hold the bytes.
        if !shared.wait_flowing(link, &[direction]) || sink.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    shared.finish(id, link);
}

/// Locks even if another proxy thread panicked, so one failure cannot wedge the rest.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
