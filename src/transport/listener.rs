//! The TCP listener: accepts sockets and serves HTTP/1.1 on them, with the limits that keep one hostile or
//! broken client from holding what every other client needs.
//!
//! - A client must send a request's headers within `limits.request_header_timeout`, counted from the
//!   connect or from the end of the previous response, so a bare connect, a slowloris dripping headers and
//!   an idle keep-alive connection are all closed after it.
//! - Sockets that have not yet carried an authenticated request are capped
//!   (`limits.unauthenticated_connections`).
//! - A write the client does not take for longer than `limits.write_timeout` (and a little more, so
//!   that a WebSocket writer's own deadline, which closes with `Slow consumer`, goes first) aborts the
//!   socket: a response the client stopped reading (an SSE stream, a long poll) never holds it for good.
//! - `limits.reserved_file_descriptors` are kept free. Past the cap or into the reserve, a new socket is
//!   still accepted but only answered: `/healthz` with 200 and anything else with 503, then closed. So the
//!   edge keeps answering its probes and refusing clearly instead of hanging in the accept queue.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

/// What the listener enforces; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub unauthenticated: usize,
    pub reserved_file_descriptors: usize,
}

/// After shutdown, how long the listener waits for requests in flight (long polls, streams) to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a socket over the limits has to send its request (a probe sends it at once).
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the accept loop backs off when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Sockets open and sockets not yet authenticated, across the listener.
#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    unauthenticated: AtomicUsize,
}

/// One accepted socket as request handlers see it: they mark it authenticated. Handlers find it with the
/// [`RequestSocket`] extractor.
#[derive(Clone)]
pub struct Socket(Arc<SocketState>);

struct SocketState {
    counts: Arc<Counts>,
    authenticated: AtomicBool,
}

impl Socket {
    fn new(counts: &Arc<Counts>) -> Self {
        counts.unauthenticated.fetch_add(1, Ordering::Relaxed);
        Socket(Arc::new(SocketState { counts: Arc::clone(counts), authenticated: AtomicBool::new(false) }))
    }

    /// A request on this socket carried valid credentials: it no longer counts against the cap of
    /// unauthenticated sockets.
    pub fn authenticated(&self) {
        if !self.0.authenticated.swap(true, Ordering::Relaxed) {
            self.0.counts.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for SocketState {
    fn drop(&mut self) {
        if !self.authenticated.load(Ordering::Relaxed) {
            self.counts.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The socket a request came on; `None` for requests that did not come through [`serve`] (in-process
/// tests calling the router directly).
pub struct RequestSocket(pub Option<Socket>);

impl RequestSocket {
    pub fn authenticated(&self) {
        if let Some(socket) = &self.0 {
            socket.authenticated();
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestSocket {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestSocket(parts.extensions.get::<Socket>().cloned()))
    }
}

/// How much longer than `limits.write_timeout` a stalled write may wait at the socket: the transports'
/// own deadlines, which close a client with `Slow consumer`, come first.
const STALL_GRACE: Duration = Duration::from_secs(2);

/// A TCP stream counted as an open socket for as long as it lives, upgraded to a WebSocket or not, whose
/// writes fail once one has waited on the client past the stall limit.
struct CountedStream {
    stream: TcpStream,
    counts: Arc<Counts>,
    stall_limit: Duration,
    /// Set while a write waits on the client; allocated only then.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CountedStream {
    fn new(stream: TcpStream, counts: &Arc<Counts>, write_timeout: Duration) -> Self {
        counts.open.fetch_add(1, Ordering::Relaxed);
        Self { stream, counts: Arc::clone(counts), stall_limit: write_timeout + STALL_GRACE, stalled: None }
    }

    /// Passes a write's outcome through, timing how long it has been waiting on the client.
    fn timed<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let limit = self.stall_limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing written to it for longer than the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How many sockets may be open before new ones are only answered 503: the process's file limit, less
/// the descriptors it held before serving (logs, the broker, the listener) and the reserve.
fn socket_budget(reserved: usize) -> usize {
    let limit = file_limit().unwrap_or(1024);
    let in_use = std::fs::read_dir("/proc/self/fd").map(Iterator::count).unwrap_or(32);
    limit.saturating_sub(in_use).saturating_sub(reserved)
}

fn file_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (status == 0).then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish (a few
/// seconds at most) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let counts = Arc::new(Counts::default());
    let budget = socket_budget(limits.reserved_file_descriptors);
    let (stopping, stop) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors (or a connection reset before it was taken): the socket waits
                    // in the backlog, and the reserve lets it be answered once one is free.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = CountedStream::new(stream, &counts, limits.write_timeout);
        let over = counts.open.load(Ordering::Relaxed) > budget
            || counts.unauthenticated.load(Ordering::Relaxed) >= limits.unauthenticated;
        if over {
            // Answering takes the client's request, so a refused socket waits for it, briefly. Only half of
            // the reserved descriptors may wait so; past that a socket gets its 503 at once, unread, and
            // its descriptor back.
            if counts.open.load(Ordering::Relaxed) <= budget + limits.reserved_file_descriptors / 2 {
                tokio::spawn(refuse(stream, limits.header_timeout.min(REFUSAL_HEADER_TIMEOUT)));
            } else {
                tokio::spawn(refuse_unread(stream));
            }
            continue;
        }
        let socket = Socket::new(&counts);
        tokio::spawn(serve_socket(stream, socket, app.clone(), limits.header_timeout, stop.clone()));
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(stop);
    if tokio::time::timeout(SHUTDOWN_GRACE, stopping.closed()).await.is_err() {
        tracing::info!("requests still in flight at shutdown were cut");
    }
    Ok(())
}

/// Serves HTTP on one socket until the client or the server ends it, or shutdown.
async fn serve_socket(
    stream: CountedStream,
    socket: Socket,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(socket.clone());
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let connection = builder(header_timeout).serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(connection);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !graceful => {
                graceful = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The response of a socket refused without reading its request.
const UNREAD_REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";

/// Refuses a socket without reading from it, when even the sockets being answered are too many.
async fn refuse_unread(mut stream: CountedStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(REFUSAL_HEADER_TIMEOUT, stream.write_all(UNREAD_REFUSAL)).await;
}

/// Answers one request on a socket over the limits, `/healthz` with 200 and the rest with 503, and closes.
async fn refuse(stream: CountedStream, header_timeout: Duration) {
    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
        let (status, text) = if request.uri().path() == "/healthz" {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "the server is at its connection limit; try again later")
        };
        Response::builder()
            .status(status)
            .header(header::CONNECTION, "close")
            .header(header::RETRY_AFTER, "1")
            .body(Body::from(text))
    });
    let mut builder = builder(header_timeout);
    builder.keep_alive(false);
    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
}

fn builder(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a router whose `/login` marks its socket authenticated, until the test ends.
    async fn start(limits: ListenerLimits) -> std::net::SocketAddr {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/big", get(|| async { vec![b'x'; 32 << 20] }))
            .route(
                "/login",
                get(|socket: RequestSocket| async move {
                    socket.authenticated();
                    "in"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, app, limits, std::future::pending()));
        address
    }

    fn limits(unauthenticated: usize) -> ListenerLimits {
        ListenerLimits {
            header_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(200),
            unauthenticated,
            reserved_file_descriptors: 16,
        }
    }

    /// Sends one request and reads the whole answer (the server closes or the test times out).
    async fn request(address: std::net::SocketAddr, path: &str, close: bool) -> (TcpStream, String) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let connection = if close { "close" } else { "keep-alive" };
        let text = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: {connection}\r\n\r\n");
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut answer = vec![0; 1024];
        let read =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await.unwrap().unwrap();
        (stream, String::from_utf8_lossy(&answer[..read]).into_owned())
    }

    /// Waits for the server to close `stream`; returns how long it took.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut byte = [0; 64];
        let started = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout_at(started + limit, stream.read(&mut byte)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn bare_connects_slow_headers_and_idle_keep_alives_are_closed_after_the_header_timeout() {
        let address = start(limits(100)).await;
        let mut bare = TcpStream::connect(address).await.unwrap();
        assert!(closed_within(&mut bare, Duration::from_secs(2)).await, "a connect that sends nothing");

        let mut drip = TcpStream::connect(address).await.unwrap();
        let dripping = async {
            for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: 0123456789".iter() {
                if drip.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(4), dripping).await.unwrap();
        assert!(closed_within(&mut drip, Duration::from_millis(500)).await, "headers dripped slowly");

        let (mut idle, answer) = request(address, "/healthz", false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed_within(&mut idle, Duration::from_secs(2)).await, "an idle keep-alive connection");
    }

    #[tokio::test]
    async fn a_response_the_client_does_not_read_has_its_socket_closed_after_the_write_timeout() {
        let address = start(limits(100)).await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        // Longer than the write timeout (200 ms) and its grace (2 s), reading nothing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut taken = 0;
        let mut buffer = vec![0; 64 * 1024];
        let reading = async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => taken += read,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reading).await.expect("the server closed the socket");
        assert!(taken < 32 << 20, "the response was cut short: {taken} bytes");
    }

    #[tokio::test]
    async fn past_the_cap_of_unauthenticated_sockets_new_ones_get_503_but_healthz_answers() {
        let address = start(ListenerLimits { header_timeout: Duration::from_secs(30), ..limits(3) }).await;
        let mut holding = Vec::new();
        for _ in 0..3 {
            holding.push(TcpStream::connect(address).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, answer) = request(address, "/login", true).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let (_, answer) = request(address, "/healthz", true).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        holding.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut authenticated, answer) = request(address, "/login", false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "once they are gone: {answer}");
        for _ in 0..2 {
            holding.push(TcpStream::connect(address).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, answer) = request(address, "/login", true).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "an authenticated socket does not count: {answer}");
        authenticated.shutdown().await.unwrap();
    }
}
