//! A Gateway rule's RequestMirror: a copy of each request, head and body, sent to an endpoint of
//! each mirror backend from a task of its own; the answer's head is read and the connection
//! dropped. The client's request never waits for a mirror's IO nor sees a mirror fail.
//!
//! A request without a body is copied whole when it is decided ([`send`]). A request with a
//! body (any size, Content-Length or chunked, HTTP/1.1 or HTTP/2) is copied as it streams
//! ([`Teed`], the front end's [`SendBody`] wrapped): the body is written to the primary upstream
//! through a [`Tee`],
//! and every byte the primary took (the head, then the body framed as kedge framed it for the
//! primary: a chunked body stays chunked, so nothing is held back to count it) is queued for
//! each mirror task, which writes it to its own connection.
//!
//! The queues are bounded: `[upstream] mirror_buffer` bytes (4 MiB by default) per mirror of a
//! request, [`WORKER_BUDGET`] for all mirrors of a worker. A mirror that falls that far behind
//! (slow, stalled, still connecting), or whose connect or write fails, is **abandoned**: its
//! queue freed, its connection closed mid-request, `kedge_mirror_abandoned_total` counted. A
//! request whose body fails towards the primary (client gone, too large) cuts its mirrors off
//! the same way: a mirror never sees a request complete that the primary did not.
//!
//! After each write to the primary that woke a mirror task, the request's task lets that task
//! have one poll before going on ([`Tee::copy`]): otherwise a request whose reads and writes all
//! complete at once (a fast client, the epoll driver) would starve its mirrors until its body
//! ends.
//!
//! gRPC (an HTTP/2 backend, `forward_h2.rs`) is not mirrored: its bodies are full-duplex
//! streams of any length, and mirror backends are spoken to over HTTP/1.1.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::AsyncWriteRent;

use super::decide::Forward;
use super::error::RequestError;
use super::forward::{self, SendBody};
use super::pump::{self, ReadResult};
use super::session::Ctx;
use super::{Snapshot, Worker};
use crate::metrics::WorkerMetrics;
use crate::routes::Backend;

/// The most bytes queued for all mirrors of one worker: what mirroring may cost a worker in
/// memory, however many mirrored requests are in flight (`[upstream] mirror_buffer` bounds one
/// mirror of one request).
pub(super) const WORKER_BUDGET: usize = 64 * 1024 * 1024;

/// A worker's mirror state: the bytes its mirror queues hold and its counters. One per worker,
/// shared by its mirror tasks (`Rc`: never crosses threads).
pub(super) struct Budget {
    queued: Cell<usize>,
    metrics: Arc<WorkerMetrics>,
}

impl Budget {
    pub(super) fn new(metrics: Arc<WorkerMetrics>) -> Budget {
        Budget {
            queued: Cell::new(0),
            metrics,
        }
    }
}

/// Whether the rule of `f` mirrors requests: the one check the request path pays without
/// mirrors.
pub(super) fn wanted(f: &Forward<'_>) -> bool {
    f.gw.is_some_and(|gw| !gw.action.mirrors.is_empty())
}

/// Starts the mirror copies of a request without a body, whose upstream head is `head`.
/// Costs nothing for a rule without mirrors.
pub(super) fn send(worker: &Worker, snap: &Snapshot, f: &Forward<'_>, head: &[u8]) {
    if !wanted(f) {
        return;
    }
    start(worker, snap, f, |q| {
        q.push(head);
        q.finish();
    });
}

/// A front end's [`SendBody`] that also copies the body to the mirrors of the request's rule,
/// if it has any: the primary upstream is written through a [`Tee`]. Without mirrors it is the
/// front end's body and one `None`.
pub(super) struct Teed<'a, B> {
    body: B,
    mirrors: Option<(Ctx<'a>, &'a Forward<'a>)>,
}

impl<'a, B: SendBody> Teed<'a, B> {
    pub(super) fn new(cx: Ctx<'a>, f: &'a Forward<'a>, body: B) -> Teed<'a, B> {
        Teed {
            body,
            mirrors: wanted(f).then_some((cx, f)),
        }
    }
}

impl<B: SendBody> SendBody for Teed<'_, B> {
    /// The body goes to the primary once (a request with a body is never retried), so the
    /// mirrors start with it: none is started for a request that never got a connection.
    async fn send<W: AsyncWriteRent>(
        &mut self,
        upstream: &mut W,
        out: &mut Vec<u8>,
        send_timeout: Duration,
        max_body: u64,
    ) -> Result<(), RequestError> {
        let Some((cx, f)) = self.mirrors.take() else {
            return self.body.send(upstream, out, send_timeout, max_body).await;
        };
        let mut copies = Vec::new();
        start(cx.worker, cx.snap, f, |q| copies.push(q));
        let mut tee = Tee { upstream, copies };
        let sent = self.body.send(&mut tee, out, send_timeout, max_body).await;
        if sent.is_ok() {
            for q in &tee.copies {
                q.finish();
            }
        }
        // Dropping the tee cuts off the mirrors of a body that did not go through.
        sent
    }
}

/// Makes a queue and starts a mirror task for each mirror of `f`'s rule that this request goes
/// to (its `percent`), to a random endpoint of the mirror backend; `each` gets the queues.
fn start(worker: &Worker, snap: &Snapshot, f: &Forward<'_>, mut each: impl FnMut(Feed)) {
    let Some(gw) = f.gw else { return };
    for &(id, percent) in &gw.action.mirrors {
        if percent < 100 && worker.random() % 100 >= u64::from(percent) {
            continue;
        }
        let Some(b) = snap.table.backends.get(id) else { continue };
        if b.endpoints.is_empty() || b.h2 {
            continue;
        }
        let n = b.endpoints.len() as u64;
        let addr = b.endpoints[usize::try_from(worker.random() % n).unwrap_or(0)];
        let backend = Backend {
            name: Box::default(),
            endpoints: Vec::new(),
            tls: b.tls.clone(),
            h2: false,
        };
        let up = &snap.upstream;
        let (connect, timeout) = (up.connect_timeout, up.read_timeout.min(up.send_timeout));
        let copy = Feed(Rc::new(RefCell::new(Queue {
            chunks: VecDeque::new(),
            queued: 0,
            limit: up.mirror_buffer,
            state: State::Open,
            waker: None,
            turn: None,
            started: false,
            budget: Rc::clone(&worker.mirrors),
        })));
        monoio::spawn(mirror(backend, addr, Feed(Rc::clone(&copy.0)), connect, timeout));
        each(copy);
    }
}

/// Where a mirror's copy stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// More bytes may come.
    Open,
    /// The request is whole in the queue.
    Done,
    /// Given up: the mirror task closes its connection.
    Abandoned,
}

/// The bytes of one request waiting for one mirror task.
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes in `chunks`, and in the write the mirror task is doing.
    queued: usize,
    /// The most `queued` may be (`[upstream] mirror_buffer`).
    limit: usize,
    state: State,
    /// The mirror task, waiting for bytes (or for its write, which abandonment cuts short).
    waker: Option<Waker>,
    /// The request's task, giving the mirror task its turn (see [`Tee::copy`]).
    turn: Option<Waker>,
    /// The mirror task has been polled (before that it is runnable, with no waker yet).
    started: bool,
    budget: Rc<Budget>,
}

/// A handle on one mirror's queue, for the request's side or the mirror task.
struct Feed(Rc<RefCell<Queue>>);

impl Feed {
    /// Queues `data` for the mirror, or abandons the mirror when it would go over its budget
    /// (a mirror that has taken everything takes the next write whatever its size: bounded by
    /// the largest body write, 256 KiB) or the worker's. True when that woke the mirror task (it is runnable now).
    fn push(&self, data: &[u8]) -> bool {
        let mut q = self.0.borrow_mut();
        if q.state != State::Open || data.is_empty() {
            return false;
        }
        let n = data.len();
        if (q.queued > 0 && q.queued + n > q.limit) || q.budget.queued.get() + n > WORKER_BUDGET {
            tracing::debug!(queued = q.queued, "mirror fell behind; abandoned");
            q.abandon();
            return false;
        }
        q.queued += n;
        q.budget.queued.set(q.budget.queued.get() + n);
        q.chunks.push_back(data.to_vec());
        q.wake() || !q.started
    }

    /// Has the request's task woken once the mirror task has had its turn.
    fn after_turn(&self, request: &Waker) {
        self.0.borrow_mut().turn = Some(request.clone());
    }

    /// The mirror task's turn has come: the request's task may go on.
    fn give_turn_back(&self) {
        let mut q = self.0.borrow_mut();
        q.started = true;
        if let Some(w) = q.turn.take() {
            w.wake();
        }
    }

    /// The request is whole: the mirror task sends what is queued and reads the answer.
    fn finish(&self) {
        let mut q = self.0.borrow_mut();
        if q.state == State::Open {
            q.state = State::Done;
            q.wake();
        }
    }
}

impl Queue {
    /// Wakes the mirror task; true if it was waiting.
    fn wake(&mut self) -> bool {
        let Some(w) = self.waker.take() else { return false };
        w.wake();
        true
    }

    /// Gives the mirror up: frees its queue, counts it, wakes its task to close the connection.
    fn abandon(&mut self) {
        if self.state == State::Abandoned {
            return;
        }
        self.state = State::Abandoned;
        self.chunks = VecDeque::new();
        self.budget.queued.set(self.budget.queued.get() - self.queued);
        self.queued = 0;
        self.budget.metrics.mirrors_abandoned.fetch_add(1, Relaxed);
        self.wake();
        if let Some(w) = self.turn.take() {
            w.wake();
        }
    }

    /// The mirror task is done with `n` bytes it wrote.
    fn written(&mut self, n: usize) {
        if self.state != State::Abandoned {
            self.queued -= n;
            self.budget.queued.set(self.budget.queued.get() - n);
        }
    }
}

impl Drop for Feed {
    /// The request side let go before finishing (its body failed), or the mirror task ended
    /// before the request was whole (connect or write failed): the mirror is abandoned. A
    /// request's task waiting for a turn of the mirror's goes on.
    fn drop(&mut self) {
        let mut q = self.0.borrow_mut();
        if q.state == State::Open {
            q.abandon();
        }
        if let Some(w) = q.turn.take() {
            w.wake();
        }
    }
}

/// What the mirror task does next.
enum Next {
    Write(Vec<u8>),
    Done,
    Abandoned,
}

impl Feed {
    /// Waits for the next queued bytes, the end of the request, or abandonment.
    async fn next(&self) -> Next {
        poll_fn(|cx| {
            self.give_turn_back();
            let mut q = self.0.borrow_mut();
            if q.state == State::Abandoned {
                return Poll::Ready(Next::Abandoned);
            }
            if let Some(c) = q.chunks.pop_front() {
                return Poll::Ready(Next::Write(c));
            }
            if q.state == State::Done {
                return Poll::Ready(Next::Done);
            }
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Runs `op` until it ends, or until the mirror is abandoned (`None`; `op` is dropped,
    /// which cancels its IO).
    async fn unless_abandoned<T>(&self, op: impl Future<Output = T>) -> Option<T> {
        let mut op = pin!(op);
        poll_fn(|cx| {
            self.give_turn_back();
            {
                let mut q = self.0.borrow_mut();
                if q.state == State::Abandoned {
                    return Poll::Ready(None);
                }
                if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    q.waker = Some(cx.waker().clone());
                }
            }
            op.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

/// One mirror of one request: connects to `addr`, writes the queued bytes as they come, then
/// reads the answer's head and drops the connection. Returns early, closing the connection,
/// when the copy is abandoned.
async fn mirror(backend: Backend, addr: SocketAddr, copy: Feed, connect: Duration, timeout: Duration) {
    let Some(Ok(mut up)) = copy
        .unless_abandoned(forward::connect_new(&backend, addr, connect))
        .await
    else {
        tracing::debug!(mirror = %addr, "mirror connect failed or abandoned");
        return;
    };
    loop {
        let chunk = match copy.next().await {
            Next::Write(c) => c,
            Next::Done => break,
            Next::Abandoned => return,
        };
        let n = chunk.len();
        match copy.unless_abandoned(pump::write_all(&mut up, chunk, timeout)).await {
            Some(Ok((Ok(_), _))) => copy.0.borrow_mut().written(n),
            Some(_) => {
                tracing::debug!(mirror = %addr, "mirror write failed or timed out");
                copy.0.borrow_mut().abandon();
                return;
            }
            None => return,
        }
    }
    // Until the answer's head has come (or the mirror closes or stalls): then dropped.
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match pump::read_with_timeout(&mut up, &mut buf, timeout).await {
            ReadResult::Data(_) => {}
            ReadResult::Eof | ReadResult::Timeout | ReadResult::Error => return,
        }
    }
}

/// The primary upstream connection as a request body's sink, copying every byte it takes to the
/// request's mirrors.
pub(super) struct Tee<'u, W> {
    upstream: &'u mut W,
    copies: Vec<Feed>,
}

impl<W: AsyncWriteRent> Tee<'_, W> {
    /// Copies what the primary took to each mirror's queue; when that woke a mirror task, lets
    /// it have its turn before going on. A self-wake would not do: monoio runs a task that
    /// wakes itself again first, so a request whose reads and writes all complete at once (a
    /// fast client, the epoll driver) would starve its mirror tasks until its body ends. The
    /// turn is one poll of a task that is already runnable: the request never waits for the
    /// mirror's IO.
    async fn copy(&mut self, taken: &[u8]) {
        let mut woke = false;
        for c in &self.copies {
            woke |= c.push(taken);
        }
        if !woke {
            return;
        }
        let mut waited = false;
        poll_fn(|cx| {
            if waited {
                return Poll::Ready(());
            }
            waited = true;
            for c in &self.copies {
                c.after_turn(cx.waker());
            }
            Poll::Pending
        })
        .await;
    }
}

impl<W: AsyncWriteRent> AsyncWriteRent for Tee<'_, W> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.upstream.write(buf).await;
        if let Ok(n) = res {
            let n = n.min(buf.bytes_init());
            // SAFETY: `IoBuf` guarantees `read_ptr` points at `bytes_init` initialised bytes
            // that stay valid while `buf` is alive and unmoved; the slice lives only for this
            // call.
            #[allow(unsafe_code)]
            let taken = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
            self.copy(taken).await;
        }
        (res, buf)
    }

    /// Not used by the body writers (they write one buffer at a time); refused rather than
    /// passed on uncopied.
    async fn writev<T: IoVecBuf>(&mut self, buf_vec: T) -> BufResult<usize, T> {
        (Err(std::io::ErrorKind::Unsupported.into()), buf_vec)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.upstream.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.upstream.shutdown().await
    }
}
