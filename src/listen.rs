//! HTTP/1 listeners with limits, for the metrics server, the built-in
//! HTTP-01 responder and (over TLS, [`serve_tls_async`]) the MTA-STS
//! responder.
//!
//! Rule: a listener can never take the daemon's descriptors or a core. At
//! most [`Limits::max_connections`] connections are open at once: at the
//! cap, a new connection takes the place of the oldest one that has not
//! sent a byte yet (so a scrape is answered at once while idle connections
//! fill the cap), and when every open connection has spoken, the new one
//! is closed as soon as it is accepted. A connection that has not sent a
//! complete request head within `header_timeout` (after it opened or after
//! its last response) is closed, and so is one with no bytes moving either
//! way for `idle_timeout`; a failing `accept` (EMFILE, ENFILE, ENOMEM...)
//! pauses the loop with a growing backoff, said once per episode, instead
//! of spinning. Request heads are capped; [`serve`] and [`serve_tls`]
//! ignore bodies. Over TLS the handshake counts as part of the request
//! head: it must end within `header_timeout`, and a connection whose
//! handshake fails is closed without a word.
//!
//! [`serve_tls_async`] gives its handler the request itself, body
//! included, for the one endpoint that takes uploads (TLS-RPT reports):
//! the handler reads the body under its own cap, and a body also ends
//! under the limits here, since the idle timeout applies while it is
//! read (no byte for `idle_timeout` closes the connection); the handler
//! bounds its total time. A connection closed after a response (a
//! refused upload's `Connection: close`) lingers: its sending side is
//! closed, what still arrives is discarded for at most 2 s, so the peer
//! reads the response instead of a reset.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Time for a complete request head, from the connection's start or
    /// its last response.
    pub header_timeout: Duration,
    /// Time without a byte read or written before the connection is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits of mxkeys' own listeners: a scraper or a CA's validator
    /// sends its request at once and needs few connections.
    pub const DEFAULT: Limits = Limits {
        max_connections: 256,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
    };
}

/// First pause after a failed `accept`; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The largest request head read (a scrape or a validation is far smaller).
const MAX_HEAD: usize = 16 * 1024;

/// Serves `listener` with `handler` under `limits` until the task is
/// dropped. `what` names the listener in log lines.
pub async fn serve<H>(listener: TcpListener, limits: Limits, what: &'static str, handler: H)
where
    H: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler =
        move |_: Option<Arc<str>>, req: Request<Incoming>| std::future::ready(handler(&req));
    accept_loop(listener, limits, what, None, Arc::new(handler)).await;
}

/// Like [`serve`], with a handler that answers with a future (one that
/// does its work off the runtime's thread, say).
pub async fn serve_async<H, F>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = move |_: Option<Arc<str>>, req: Request<Incoming>| handler(req);
    accept_loop(listener, limits, what, None, Arc::new(handler)).await;
}

/// Like [`serve`], over TLS with `tls`: `handler` is also given the server
/// name the client asked for in its handshake (SNI), if any.
pub async fn serve_tls<H>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    tls: Arc<rustls::ServerConfig>,
    handler: H,
) where
    H: Fn(Option<&str>, &Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = move |sni: Option<Arc<str>>, req: Request<Incoming>| {
        std::future::ready(handler(sni.as_deref(), &req))
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(listener, limits, what, Some(acceptor), Arc::new(handler)).await;
}

/// Like [`serve_tls`], with an async `handler` that owns the request (and
/// so can read its body). The connection's limits still apply while it
/// runs: no byte moving for `idle_timeout` closes the connection.
pub async fn serve_tls_async<H, F>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    tls: Arc<rustls::ServerConfig>,
    handler: H,
) where
    H: Fn(Option<Arc<str>>, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(listener, limits, what, Some(acceptor), Arc::new(handler)).await;
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    limits: Limits,
    what: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Arc<H>,
) where
    H: Fn(Option<Arc<str>>, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let silent = Silent::default();
    let mut backoff = Duration::ZERO;
    let mut refusing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                if !backoff.is_zero() {
                    tracing::info!("{what}: accepting connections again");
                }
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                if backoff.is_zero() {
                    tracing::warn!("{what}: cannot accept a connection: {e}; pausing the listener");
                }
                backoff = next_backoff(backoff);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            // At the cap: the oldest connection that never spoke makes room.
            Err(_) if silent.evict_oldest() => {
                tokio::time::timeout(EVICTION_WAIT, permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            if !refusing {
                tracing::warn!(
                    "{what}: {} connections open and busy; closing new ones until some end",
                    limits.max_connections
                );
                refusing = true;
            }
            drop(stream);
            continue;
        };
        refusing = false;
        let handler = handler.clone();
        let entry = silent.register();
        let silent = silent.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, limits, tls, handler, &entry).await;
            silent.remove(&entry);
        });
    }
}

/// How long a new connection waits for the slot of the connection it
/// evicted (that one only has to be dropped).
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// A connection that has not sent a byte yet: told to close when evicted.
struct SilentEntry {
    id: u64,
    spoke: AtomicBool,
    close: Notify,
}

/// The open connections that have not sent a byte yet, oldest first.
#[derive(Clone, Default)]
struct Silent {
    inner: Arc<Mutex<(u64, VecDeque<Arc<SilentEntry>>)>>,
}

impl Silent {
    fn register(&self) -> Arc<SilentEntry> {
        let Ok(mut g) = self.inner.lock() else {
            return Arc::new(SilentEntry {
                id: u64::MAX,
                spoke: AtomicBool::new(true),
                close: Notify::new(),
            });
        };
        g.0 += 1;
        let entry = Arc::new(SilentEntry {
            id: g.0,
            spoke: AtomicBool::new(false),
            close: Notify::new(),
        });
        g.1.push_back(entry.clone());
        entry
    }

    fn remove(&self, entry: &SilentEntry) {
        if let Ok(mut g) = self.inner.lock() {
            g.1.retain(|e| e.id != entry.id);
        }
    }

    /// Tells the oldest connection that has still not spoken to close;
    /// false when there is none.
    fn evict_oldest(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        while let Some(e) = g.1.pop_front() {
            if !e.spoke.load(Ordering::Relaxed) {
                // Stored, so the task sees it even before it waits.
                e.close.notify_one();
                return true;
            }
        }
        false
    }
}

/// The pause after one more failed `accept`.
fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        FIRST_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// Serves one connection until it ends, times out, goes idle, or is
/// evicted before it spoke.
async fn serve_connection<H, F>(
    stream: TcpStream,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Arc<H>,
    entry: &Arc<SilentEntry>,
) where
    H: Fn(Option<Arc<str>>, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let start = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: stream,
        start,
        activity: activity.clone(),
        entry: entry.clone(),
    };
    let Some(acceptor) = tls else {
        return drive(io, None, limits, handler, entry, start, &activity).await;
    };
    let accept = tokio::time::timeout(limits.header_timeout, acceptor.accept(io));
    tokio::pin!(accept);
    let stream = loop {
        tokio::select! {
            done = accept.as_mut() => match done {
                Ok(Ok(stream)) => break stream,
                // A failed or slow handshake: nothing to answer.
                _ => return,
            },
            () = entry.close.notified() => {
                if !entry.spoke.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    };
    let sni = stream.get_ref().1.server_name().map(str::to_owned);
    drive(stream, sni, limits, handler, entry, start, &activity).await;
}

/// Runs HTTP/1 on `io` (plain or TLS) under the limits.
async fn drive<IO, H, F>(
    io: IO,
    sni: Option<String>,
    limits: Limits,
    handler: Arc<H>,
    entry: &Arc<SilentEntry>,
    start: Instant,
    activity: &AtomicU64,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Option<Arc<str>>, Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let sni: Option<Arc<str>> = sni.map(Arc::from);
    let service = hyper::service::service_fn(move |req| {
        let reply = handler(sni.clone(), req);
        async move { Ok::<_, Infallible>(reply.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .without_shutdown();
    tokio::pin!(conn);
    loop {
        let seen = activity.load(Ordering::Relaxed);
        let deadline = start + Duration::from_millis(seen) + limits.idle_timeout;
        tokio::select! {
            done = conn.as_mut() => {
                if let Ok(parts) = done {
                    linger(parts.io.into_inner()).await;
                }
                return;
            }
            () = entry.close.notified() => {
                if !entry.spoke.load(Ordering::Relaxed) {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.load(Ordering::Relaxed) == seen {
                    // Idle: dropping the connection closes it.
                    return;
                }
            }
        }
    }
}

/// How long a closed connection's unread input is still read and thrown
/// away (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// Ends a connection whose last response is written: closes the sending
/// side, then reads and discards what the peer still sends until it
/// closes too, for at most [`LINGER`]. Closing a socket with unread input
/// sends a reset, which can destroy the response before the peer reads
/// it (a client still uploading a body that was refused mid-way, 413,
/// would never see why).
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(LINGER, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A stream that records when bytes last moved (milliseconds after
/// `start`) and whether the peer has sent any.
struct Tracked {
    inner: TcpStream,
    start: Instant,
    activity: Arc<AtomicU64>,
    entry: Arc<SilentEntry>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.entry.spoke.store(true, Ordering::Relaxed);
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn ok_handler(_: &Request<Incoming>) -> Response<Full<Bytes>> {
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    }

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, limits, "test listener", ok_handler));
        (addr, task)
    }

    async fn get(addr: std::net::SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Reads until the peer closes (Ok) or `limit` passes (Err).
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<(), ()> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            _ => Err(()),
        }
    }

    #[test]
    fn backoff_grows_to_a_bound() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[tokio::test]
    async fn at_the_cap_a_request_takes_the_place_of_the_oldest_silent_connection() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _task) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), get(addr))
            .await
            .expect("no answer at the cap")
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        // The oldest silent connection made room; the newest still waits.
        assert_eq!(
            closed_within(&mut held[0], Duration::from_secs(10)).await,
            Ok(())
        );
        assert_eq!(
            closed_within(&mut held[3], Duration::from_millis(300)).await,
            Err(())
        );
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_busy_a_new_one_is_closed() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _task) = start(limits).await;
        // Two connections that spoke (half a request head each).
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            closed_within(&mut extra, Duration::from_secs(10)).await,
            Ok(())
        );
        for s in &mut busy {
            assert_eq!(closed_within(s, Duration::from_millis(200)).await, Err(()));
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _task) = start(limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            closed_within(&mut silent, Duration::from_secs(10)).await,
            Ok(())
        );
        // Half a request head is no better.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        assert_eq!(
            closed_within(&mut slow, Duration::from_secs(10)).await,
            Ok(())
        );
    }

    /// A TLS listener with a self-signed certificate for `localhost`.
    async fn start_tls(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_tls(
            listener,
            limits,
            "test tls listener",
            Arc::new(config),
            |_: Option<&str>, req: &Request<Incoming>| ok_handler(req),
        ));
        (addr, task)
    }

    #[tokio::test]
    async fn a_tls_handshake_that_does_not_finish_is_closed_after_the_header_timeout() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _task) = start_tls(limits).await;
        // The first bytes of a ClientHello record, then nothing.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
            .await
            .unwrap();
        assert_eq!(
            closed_within(&mut slow, Duration::from_secs(10)).await,
            Ok(())
        );
        // Plain HTTP on the TLS port is closed too, unanswered.
        let reply = tokio::time::timeout(Duration::from_secs(10), get(addr))
            .await
            .expect("not closed");
        assert!(!reply.unwrap_or_default().contains("ok"));
    }

    #[tokio::test]
    async fn a_connection_with_nothing_moving_is_closed_after_the_idle_timeout() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_millis(300),
        };
        let (addr, _task) = start(limits).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            closed_within(&mut idle, Duration::from_secs(10)).await,
            Ok(())
        );
    }
}
