//! Workers: one OS thread per core, each with its own monoio runtime, listener and state.
//!
//! Owns: starting the runtimes (io_uring with the measured-best ring flags, falling back to
//! monoio's epoll driver when io_uring cannot be set up), pinning each thread to one allowed
//! CPU, refusing an address another process listens on ([`claim_address`]), binding one
//! SO_REUSEPORT listener per worker, the file-descriptor budget ([`FdBudget`]: raising the soft
//! `RLIMIT_NOFILE` at start), the accept loop with its connection bound and fd reserve, the
//! registry of idle client connections ([`IdleConnections`]), and the per-worker background
//! tasks (timing-wheel driver, pool janitor, health log line).
//!
//! The accept loop's rules (docs/connections.md): a worker holds at most its share of
//! `max_connections`; at the bound, or when `accept` fails for want of file descriptors, it
//! closes its longest-idle keep-alive connections to make room, and only when none is idle does
//! it accept and close the new connection at once (a spare descriptor kept open for the purpose
//! makes that possible at the fd limit). Accept failures are logged at most once a second.
//!
//! Must not: share mutable state between workers. Everything a request touches is in its
//! worker's [`Worker`]; the only cross-thread data are the read-only config/routing table and
//! the monitor's single-writer counters. Must not lock or allocate per request: the idle
//! registry reuses its slots, so entering and leaving it allocates nothing after warm-up.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use crate::bufpool::BufPool;
use crate::config::Config;
use crate::monitor::{self, bump, Monitor};
use crate::route::{RouteState, Router};
use crate::upstream::{TlsConnectors, Upstreams};
use crate::wheel::Wheel;

/// IO buffer size: fits a typical chat request and any SSE event; large bodies grow past it.
pub const BUF_SIZE: usize = 16 * 1024;
/// Wheel tick: timeouts are coarse (hundreds of ms and up), so 5 ms is ample precision.
const WHEEL_TICK: Duration = Duration::from_millis(5);
/// Free buffers a worker keeps for reuse. Enough for the hot path at high concurrency; more
/// would keep a burst's memory resident after it is over.
const MAX_FREE_BUFFERS: usize = 256;

/// Everything one worker's requests share. Lives in an `Rc` on its own thread.
pub struct Worker {
    pub id: usize,
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub monitor: &'static Monitor,
    pub route_state: RouteState,
    pub bufs: BufPool,
    pub wheel: Rc<Wheel>,
    /// The upstream side: idle pool, name cache, each channel's runtime.
    pub upstreams: Upstreams,
    /// This worker's share of `max_inflight`.
    pub max_inflight: u64,
    /// This worker's share of `max_connections`.
    pub max_connections: usize,
    /// Client connections this worker holds now: counted at accept, before the connection's
    /// task first runs, so a burst of accepts cannot overshoot the bound.
    pub connections: Cell<usize>,
    /// Client connections waiting idle for their next request, oldest first.
    pub idle: IdleConnections,
    pub next_request: Cell<u64>,
    pub started_nanos: u64,
    /// Request events, for the busy-poll spinner (see [`crate::busy`]).
    pub activity: crate::busy::Activity,
}

impl Worker {
    #[inline]
    pub fn stats(&self) -> &monitor::WorkerStats {
        &self.monitor.workers[self.id]
    }
}

/// Shared, read-only inputs to every worker.
pub struct Shared {
    pub config: Arc<Config>,
    pub router: Arc<Router>,
    pub monitor: &'static Monitor,
    pub tls: TlsConnectors,
}

/// Which io driver to try first. `RINGWAY_FORCE_EPOLL=1` (or monoio's own
/// `MONOIO_FORCE_LEGACY_DRIVER=1`) skips io_uring, for testing the fallback.
fn epoll_forced() -> bool {
    ["RINGWAY_FORCE_EPOLL", "MONOIO_FORCE_LEGACY_DRIVER"]
        .iter()
        .any(|v| {
            matches!(
                std::env::var(v).as_deref(),
                Ok("1") | Ok("true") | Ok("yes")
            )
        })
}

fn uring_builder(flags: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if flags {
        // Measured on the lab VM: 17.4 µs CPU/request with default flags, 8.9 with these three.
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    b
}

/// Start `n` workers; returns their join handles once every listener is bound, or the first
/// error. Each worker reports its driver through the monitor.
pub fn start(shared: &Shared, n: usize) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let listen = shared.config.server.listen;
    claim_address(listen)?;
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
    for id in 0..n {
        let config = shared.config.clone();
        let router = shared.router.clone();
        let monitor = shared.monitor;
        let tls = shared.tls.clone();
        let cpu = if cpus.is_empty() {
            None
        } else {
            Some(cpus[id % cpus.len()])
        };
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("ringway-w{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = monoio::utils::bind_to_cpu_set([cpu]);
                }
                run_worker(id, n, listen, config, router, monitor, tls, ready);
            })?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker exited during start-up")),
        }
    }
    Ok(handles)
}

/// The CPUs this process may run on (honours taskset / cgroup cpusets).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    id: usize,
    workers: usize,
    listen: SocketAddr,
    config: Arc<Config>,
    router: Arc<Router>,
    monitor: &'static Monitor,
    tls: TlsConnectors,
    ready: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
) {
    // The ring's fd is looked for only when the spinner will need it.
    let busy_poll = !config.server.busy_poll.is_zero();
    let setup = move |driver: u8, reaper: crate::busy::Reaper| {
        let monitor = monitor;
        let config = config.clone();
        let router = router.clone();
        let tls = tls.clone();
        let ready = ready.clone();
        async move {
            monitor.workers[id].io_driver.store(driver, Relaxed);
            let listener = match bind(listen) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {listen}: {e}"),
                    )));
                    return;
                }
            };
            // Opened before the process counts as started, so it is part of the fd baseline.
            let admission = Admission::new();
            let _ = ready.send(Ok(listen));
            let worker = Rc::new(new_worker(id, workers, config, router, monitor, tls));
            serve(worker, listener, admission, reaper).await;
        }
    };
    let entries = 4096;
    if !epoll_forced() {
        for flags in [true, false] {
            let (rt, ring) = crate::busy::build_and_find_ring(busy_poll, || {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(entries)
                    .uring_builder(uring_builder(flags))
                    .enable_timer()
                    .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
                    .build()
            });
            match rt {
                Ok(mut rt) => {
                    if !flags && id == 0 {
                        crate::log::warn(
                            "io_uring: COOP_TASKRUN/SINGLE_ISSUER/DEFER_TASKRUN not supported; using default ring flags",
                        );
                    }
                    // Only a DEFER_TASKRUN ring needs the spinner's own enter; without it any
                    // enter of monoio's posts completions.
                    let reaper = match ring {
                        _ if !busy_poll || !flags => crate::busy::Reaper::Driver,
                        Some(fd) => crate::busy::Reaper::Ring(fd),
                        None => crate::busy::Reaper::Unknown,
                    };
                    rt.block_on(setup(monitor::IO_URING, reaper));
                    return;
                }
                Err(e) if !flags && id == 0 => crate::log::warn(&format!(
                    "io_uring unavailable ({e}); falling back to the epoll driver"
                )),
                Err(_) => {}
            }
        }
    } else if id == 0 {
        crate::log::info("epoll driver forced by environment");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
        .build()
    {
        Ok(mut rt) => rt.block_on(setup(monitor::EPOLL, crate::busy::Reaper::Driver)),
        Err(e) => {
            crate::log::error(&format!("worker {id}: cannot build any runtime: {e}"));
        }
    }
}

fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    let mut opts = ListenerOpts::new();
    opts.reuse_port = true;
    opts.reuse_addr = true;
    opts.backlog = 4096;
    TcpListener::bind_with_config(listen, &opts)
}

fn new_worker(
    id: usize,
    workers: usize,
    config: Arc<Config>,
    router: Arc<Router>,
    monitor: &'static Monitor,
    tls: TlsConnectors,
) -> Worker {
    let seed = (Instant::now().elapsed().as_nanos() as u64)
        ^ ((id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        ^ std::process::id() as u64;
    let started_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Worker {
        id,
        route_state: RouteState::new(seed ^ started_nanos),
        bufs: BufPool::new(BUF_SIZE, MAX_FREE_BUFFERS),
        wheel: Wheel::new(WHEEL_TICK),
        upstreams: Upstreams::new(
            &router,
            tls,
            config.timeouts[crate::config::Layer::PoolIdle],
            monitor,
            id,
            seed,
        ),
        max_inflight: (config.server.max_inflight as u64)
            .div_ceil(workers as u64)
            .max(1),
        max_connections: config.server.max_connections.div_ceil(workers).max(1),
        connections: Cell::new(0),
        idle: IdleConnections::counting(&monitor.workers[id].idle_shed),
        next_request: Cell::new(0),
        started_nanos,
        activity: Default::default(),
        config,
        router,
        monitor,
    }
}

async fn serve(
    worker: Rc<Worker>,
    listener: TcpListener,
    mut admission: Admission,
    reaper: crate::busy::Reaper,
) {
    monoio::spawn(worker.wheel.clone().drive());
    if !worker.config.server.busy_poll.is_zero() {
        use crate::busy::{spin, Reaper};
        match reaper {
            Reaper::Driver => drop(monoio::spawn(spin(worker.clone(), None))),
            Reaper::Ring(fd) => drop(monoio::spawn(spin(worker.clone(), Some(fd)))),
            Reaper::Unknown => {
                crate::log::warn("busy_poll: this worker's ring was not found; busy polling is off")
            }
        }
    }
    monoio::spawn(janitor(worker.clone()));
    if worker.id == 0 {
        monoio::spawn(health_logger(worker.clone()));
    }
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                admission.nothing_to_shed = false;
                if worker.connections.get() >= worker.max_connections
                    && !admission.room_at_bound(&worker)
                {
                    // Accepted and closed at once: the client learns now, instead of waiting in
                    // the kernel's queue for a slot.
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let slot = ConnSlot::new(&worker);
                let w = worker.clone();
                // The connection task is the only task a request ever gets: it owns the client
                // socket, its buffers and its timer, and everything is released when it ends.
                monoio::spawn(async move {
                    let _slot = slot;
                    crate::relay::serve_connection(w, stream).await
                });
            }
            Err(e) => {
                let pause = admission.accept_failed(&worker, listener.as_raw_fd(), &e);
                if !pause.is_zero() {
                    monoio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// One client connection counted against the worker's `max_connections` share, from accept
/// until its task ends (or is dropped).
struct ConnSlot(Rc<Worker>);

impl ConnSlot {
    fn new(worker: &Rc<Worker>) -> ConnSlot {
        worker.connections.set(worker.connections.get() + 1);
        ConnSlot(worker.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let c = &self.0.connections;
        c.set(c.get().saturating_sub(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Admission: the connection bound, the fd reserve, rate-limited logging

/// Idle connections closed per accept failure at the fd limit: room for a burst of new
/// connections (health checks, returning clients) before the next failure, without emptying the
/// keep-alive population in one overloaded moment.
pub const SHED_BATCH: usize = 16;
/// Pause after an accept failure at the fd limit that made room or refused a connection (the
/// closing sockets need a turn of the runtime), and after one where nothing could be done.
const FD_RETRY_SOON: Duration = Duration::from_millis(10);
const FD_RETRY_LATER: Duration = Duration::from_millis(100);
/// Pause after any other accept failure.
const OTHER_RETRY: Duration = Duration::from_millis(50);
/// At most one log line per kind (accept failures, the connection bound) per this interval.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A worker's accept-side state: the spare descriptor and the log rate limits.
struct Admission {
    /// `/dev/null`, held open so that at the fd limit one descriptor can be freed to accept a
    /// pending connection and close it (instead of leaving it in the kernel's queue).
    spare: Option<OwnedFd>,
    /// The last fd-limit failure found no idle connection to close. Only the second such
    /// failure in a row refuses a pending connection: connections accepted just before may not
    /// have reached their idle wait yet (the epoll driver accepts several without yielding).
    nothing_to_shed: bool,
    accept_log: RateLimit,
    bound_log: RateLimit,
}

/// One log line per [`LOG_EVERY`], with what happened since the previous one.
#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    /// Events since the last line that wrote none: [events, idle closed, refused].
    since: [u64; 3],
}

impl RateLimit {
    /// Records an event with `shed` idle connections closed and `refused` connections refused;
    /// returns the totals since the last line when a line is due now.
    fn note(&mut self, shed: usize, refused: bool) -> Option<[u64; 3]> {
        self.since[0] += 1;
        self.since[1] += shed as u64;
        self.since[2] += refused as u64;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

impl Admission {
    fn new() -> Admission {
        Admission {
            spare: open_spare(),
            nothing_to_shed: false,
            accept_log: RateLimit::default(),
            bound_log: RateLimit::default(),
        }
    }

    /// A connection was accepted while the worker holds its whole `max_connections` share:
    /// close the longest-idle connection to make room (true), or refuse the new one (false).
    fn room_at_bound(&mut self, worker: &Worker) -> bool {
        let stats = worker.stats();
        let shed = worker.idle.shed_oldest(1);
        if shed == 0 {
            bump(&stats.connections_rejected);
        }
        if let Some([_, shed, refused]) = self.bound_log.note(shed, shed == 0) {
            crate::log::warn(&format!(
                "worker {}: at max_connections ({} per worker): {shed} idle connection(s) asked to close to make room, {refused} new one(s) refused since the last line",
                worker.id, worker.max_connections
            ));
        }
        shed > 0
    }

    /// `accept` failed. At the fd limit, close the longest-idle connections so the pending ones
    /// can be accepted; with none idle, accept one pending connection on the spare descriptor
    /// and close it. Returns how long to pause before accepting again.
    fn accept_failed(&mut self, worker: &Worker, listener: RawFd, e: &io::Error) -> Duration {
        let stats = worker.stats();
        bump(&stats.accept_errors);
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        // (idle connections closed, pending connection refused, retry soon)
        let (shed, refused, soon) = if exhausted {
            let shed = worker.idle.shed_oldest(SHED_BATCH);
            if shed > 0 {
                self.nothing_to_shed = false;
                (shed, false, true)
            } else if !self.nothing_to_shed {
                // Give connections accepted just before a turn to reach their idle wait.
                self.nothing_to_shed = true;
                (0, false, true)
            } else {
                let refused = self.refuse_pending(worker, listener);
                (0, refused, refused)
            }
        } else {
            (0, false, false)
        };
        if let Some([n, shed, refused]) = self.accept_log.note(shed, refused) {
            let mut line = format!("worker {}: accept failed: {e}", worker.id);
            if n > 1 || shed > 0 || refused > 0 {
                line.push_str(&format!(
                    " ({} more failure(s), {shed} idle connection(s) asked to close to make room, {refused} connection(s) refused since the last line)",
                    n - 1
                ));
            }
            crate::log::warn(&line);
        }
        match e.raw_os_error() {
            _ if exhausted && soon => FD_RETRY_SOON,
            _ if exhausted => FD_RETRY_LATER,
            // The peer gave up before the accept, or a signal: nothing to wait for.
            Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) => Duration::ZERO,
            _ => OTHER_RETRY,
        }
    }

    /// The classic reserve: free the spare descriptor, accept one pending connection with it
    /// and close that at once (the client sees its connection closed instead of hanging in the
    /// queue), then take the spare back. False if nothing was pending.
    fn refuse_pending(&mut self, worker: &Worker, listener: RawFd) -> bool {
        self.spare = None;
        // SAFETY: accept4 on this worker's own listening socket, which is non-blocking (monoio
        // sets O_NONBLOCK on every listener it binds); null address pointers are allowed.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        let refused = fd >= 0;
        if refused {
            // SAFETY: `fd` was just returned by accept4 and is owned by nothing else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            bump(&worker.stats().connections_rejected);
        }
        self.spare = open_spare();
        refused
    }
}

// ---------------------------------------------------------------------------------------------
// Idle connections

const NIL: u32 = u32::MAX;

/// The client connections of one worker that wait idle for their next request, in the order
/// they began waiting, so the worker can close the longest-idle ones first when it needs room.
///
/// A connection enters with [`IdleConnections::enter`] when its idle wait begins and leaves when
/// the returned [`IdleGuard`] drops; it selects on [`IdleGuard::shed`], which completes once
/// [`IdleConnections::shed_oldest`] picked it, and then closes. A doubly linked list threaded
/// through a slab: enter, leave and shedding one are O(1), and freed slots are reused, so after
/// warm-up none of it allocates. Single-threaded, no locks: one per worker.
pub struct IdleConnections {
    list: RefCell<IdleList>,
    /// Counts the connections that did close because they were shed (one whose request
    /// arrived in the same instant is served instead, and not counted).
    closed: Option<&'static std::sync::atomic::AtomicU64>,
}

struct IdleList {
    slots: Vec<IdleSlot>,
    /// Longest waiting.
    head: u32,
    /// Most recent.
    tail: u32,
    /// First free slot; free slots chain through `next`.
    free: u32,
    /// Connections waiting (linked).
    len: usize,
}

struct IdleSlot {
    prev: u32,
    next: u32,
    state: SlotState,
    /// The waiting connection's task, woken when it is shed.
    waker: Option<Waker>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Linked, waiting.
    Waiting,
    /// Picked by `shed_oldest`: unlinked; the guard still owns the slot.
    Shed,
    /// Its `shed` future completed (and was counted): the connection is closing.
    Closing,
}

impl Default for IdleConnections {
    fn default() -> Self {
        IdleConnections::new()
    }
}

impl IdleConnections {
    pub fn new() -> IdleConnections {
        IdleConnections {
            list: RefCell::new(IdleList {
                slots: Vec::new(),
                head: NIL,
                tail: NIL,
                free: NIL,
                len: 0,
            }),
            closed: None,
        }
    }

    /// Like [`IdleConnections::new`], counting each connection that closes because it was
    /// shed in `closed` (the worker's monitor counter).
    pub fn counting(closed: &'static std::sync::atomic::AtomicU64) -> IdleConnections {
        IdleConnections {
            closed: Some(closed),
            ..IdleConnections::new()
        }
    }

    /// Connections waiting now.
    pub fn len(&self) -> usize {
        self.list.borrow().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A connection begins its idle wait: it becomes the most recent entry.
    pub fn enter(&self) -> IdleGuard<'_> {
        let mut l = self.list.borrow_mut();
        let slot = if l.free != NIL {
            let i = l.free;
            l.free = l.slots[i as usize].next;
            i
        } else {
            l.slots.push(IdleSlot {
                prev: NIL,
                next: NIL,
                state: SlotState::Free,
                waker: None,
            });
            (l.slots.len() - 1) as u32
        };
        let tail = l.tail;
        let s = &mut l.slots[slot as usize];
        s.prev = tail;
        s.next = NIL;
        s.state = SlotState::Waiting;
        if tail == NIL {
            l.head = slot;
        } else {
            l.slots[tail as usize].next = slot;
        }
        l.tail = slot;
        l.len += 1;
        IdleGuard { idle: self, slot }
    }

    /// Asks the `n` longest-waiting connections to close; returns how many there were.
    pub fn shed_oldest(&self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let waker = {
                let mut l = self.list.borrow_mut();
                let i = l.head;
                if i == NIL {
                    break;
                }
                l.unlink(i);
                let s = &mut l.slots[i as usize];
                s.state = SlotState::Shed;
                s.waker.take()
            };
            // Woken outside the borrow: waking only schedules the task, but nothing here may
            // depend on that.
            if let Some(w) = waker {
                w.wake();
            }
            done += 1;
        }
        done
    }
}

impl IdleList {
    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        self.len -= 1;
    }
}

/// A connection's place among the idle ones; dropping it leaves the list.
pub struct IdleGuard<'a> {
    idle: &'a IdleConnections,
    slot: u32,
}

impl IdleGuard<'_> {
    /// Completes once the worker asked this connection to close to make room. Its completion
    /// is counted as a closed connection: a caller that sees it must close.
    pub fn shed(&self) -> Shed<'_> {
        Shed { guard: self }
    }

    /// Whether the worker asked this connection to close.
    pub fn is_shed(&self) -> bool {
        matches!(
            self.idle.list.borrow().slots[self.slot as usize].state,
            SlotState::Shed | SlotState::Closing
        )
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let waker = {
            let mut l = self.idle.list.borrow_mut();
            if l.slots[self.slot as usize].state == SlotState::Waiting {
                l.unlink(self.slot);
            }
            let free = l.free;
            let s = &mut l.slots[self.slot as usize];
            s.state = SlotState::Free;
            s.next = free;
            s.prev = NIL;
            l.free = self.slot;
            l.slots[self.slot as usize].waker.take()
        };
        drop(waker);
    }
}

/// The future of [`IdleGuard::shed`].
pub struct Shed<'a> {
    guard: &'a IdleGuard<'a>,
}

impl Future for Shed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.guard.idle;
        let mut l = idle.list.borrow_mut();
        let s = &mut l.slots[self.guard.slot as usize];
        match s.state {
            SlotState::Shed => {
                s.state = SlotState::Closing;
                if let Some(c) = idle.closed {
                    bump(c);
                }
                return Poll::Ready(());
            }
            SlotState::Closing => return Poll::Ready(()),
            SlotState::Waiting | SlotState::Free => {}
        }
        let old = match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => s.waker.replace(cx.waker().clone()),
        };
        drop(l);
        drop(old);
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------------
// The listen address and the file-descriptor budget

/// Refuses an address another socket already listens on. The workers bind with SO_REUSEPORT,
/// which would let a second ringway (or any reuseport server of the same user) silently share
/// the port and take part of its connections; a bind without SO_REUSEPORT fails with EADDRINUSE
/// when anyone listens there, so one is tried first and released at once. It sets SO_REUSEADDR
/// like the workers do, so connections of a previous run in TIME_WAIT do not count, and it never
/// listens, so it takes no connection.
///
/// The one place a deliberate takeover (an upgrade handing the port to a new process, a later
/// issue, behind an explicit flag) will skip; nothing else depends on it.
pub fn claim_address(listen: SocketAddr) -> io::Result<()> {
    let domain = if listen.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns; closed when `sock` drops.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let (addr, len) = sockaddr(listen);
    // SAFETY: `addr` is a sockaddr_storage holding a sockaddr_in/in6 of length `len`.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EADDRINUSE) => io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "cannot listen on {listen}: another process already listens there ({e}); \
                 ringway does not share its port (a second relay would silently take part of \
                 the traffic): stop the other process or choose another server.listen"
            ),
        ),
        _ => io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")),
    })
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Descriptors the process holds besides client and upstream sockets, per process and per
/// worker (stdio, listener, ring or epoll and event fds, the spare, the blocking pool's files,
/// name resolution), with headroom.
pub const FD_RESERVE_BASE: u64 = 64;
pub const FD_RESERVE_PER_WORKER: u64 = 16;

/// How many file descriptors a config needs against what `RLIMIT_NOFILE` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// `max_connections` client sockets, one upstream socket per request in flight
    /// (`max_inflight`), and the reserve.
    pub needed: u64,
    pub reserve: u64,
    /// `RLIMIT_NOFILE` now (`u64::MAX` for unlimited).
    pub soft: u64,
    pub hard: u64,
}

impl FdBudget {
    pub fn of(config: &Config) -> FdBudget {
        let (soft, hard) = nofile_limit();
        FdBudget::with_limits(config, soft, hard)
    }

    pub fn with_limits(config: &Config, soft: u64, hard: u64) -> FdBudget {
        let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * config.effective_workers() as u64;
        FdBudget {
            needed: config.server.max_connections as u64
                + config.server.max_inflight as u64
                + reserve,
            reserve,
            soft,
            hard,
        }
    }

    /// The soft limit the process should run with: raised as far as needed, never past hard.
    pub fn target_soft(&self) -> u64 {
        self.soft.max(self.needed.min(self.hard))
    }

    /// The warning when even the hard limit leaves too little room, naming the config's keys.
    pub fn warning(&self, config: &Config) -> Option<String> {
        (self.hard < self.needed).then(|| {
            format!(
                "server.max_connections ({}) and server.max_inflight ({}) need about {} file descriptors, but RLIMIT_NOFILE allows {} (hard limit): at the limit ringway closes idle connections first and then refuses new ones; raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections",
                config.server.max_connections, config.server.max_inflight, self.needed, self.hard
            )
        })
    }
}

fn nofile_limit() -> (u64, u64) {
    // SAFETY: getrlimit fills a plain struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return (u64::MAX, u64::MAX);
        }
        (r.rlim_cur as u64, r.rlim_max as u64)
    }
}

/// At start: raises the soft `RLIMIT_NOFILE` to what the config needs (at most the hard limit),
/// and logs what it did, or warns when even the hard limit is too low.
pub fn prepare_fd_limit(config: &Config) {
    let budget = FdBudget::of(config);
    let target = budget.target_soft();
    if target > budget.soft {
        // SAFETY: setrlimit with a soft limit between the current one and the hard limit.
        let r = unsafe {
            let lim = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: budget.hard as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim)
        };
        if r == 0 {
            crate::log::info(&format!(
                "RLIMIT_NOFILE soft limit raised from {} to {target} (max_connections {} + max_inflight {} + {} for the process)",
                budget.soft, config.server.max_connections, config.server.max_inflight, budget.reserve
            ));
        } else {
            crate::log::warn(&format!(
                "cannot raise RLIMIT_NOFILE from {} to {target}: {}",
                budget.soft,
                io::Error::last_os_error()
            ));
        }
    }
    if let Some(w) = budget.warning(config) {
        crate::log::warn(&w);
    }
}

/// Closes idle upstream connections past `pool_idle`, once a second.
async fn janitor(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        worker.upstreams.pool.sweep(Instant::now());
        // Give memory freed after a burst back to the OS: mimalloc only purges when it runs,
        // and an idle worker would otherwise keep the burst's pages resident.
        // SAFETY: collects this thread's own mimalloc heap; no preconditions.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

async fn health_logger(worker: Rc<Worker>) {
    let every = worker.config.monitor.log_interval;
    loop {
        monoio::time::sleep(every).await;
        worker.monitor.log_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWake(AtomicUsize);

    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn poll_shed(g: &IdleGuard<'_>, waker: &Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        let mut f = g.shed();
        Pin::new(&mut f).poll(&mut cx).is_ready()
    }

    #[test]
    fn idle_connections_are_shed_oldest_first_and_woken() {
        let closed: &'static std::sync::atomic::AtomicU64 =
            Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let idle = IdleConnections::counting(closed);
        let counters: Vec<Arc<CountWake>> = (0..4)
            .map(|_| Arc::new(CountWake(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = counters.iter().map(|c| Waker::from(c.clone())).collect();
        let guards: Vec<IdleGuard<'_>> = (0..4).map(|_| idle.enter()).collect();
        assert_eq!(idle.len(), 4);
        for (g, w) in guards.iter().zip(&wakers) {
            assert!(!poll_shed(g, w));
        }
        assert_eq!(idle.shed_oldest(2), 2);
        assert_eq!(idle.len(), 2);
        let woken: Vec<usize> = counters.iter().map(|c| c.0.load(Relaxed)).collect();
        assert_eq!(woken, [1, 1, 0, 0]);
        let ready: Vec<bool> = guards
            .iter()
            .zip(&wakers)
            .map(|(g, w)| poll_shed(g, w))
            .collect();
        assert_eq!(ready, [true, true, false, false]);
        assert!(guards[0].is_shed() && !guards[2].is_shed());
        // Counted once each, when the future completes (the connection closes), not when asked.
        assert_eq!(closed.load(Relaxed), 2);
        assert!(poll_shed(&guards[0], &wakers[0]));
        assert_eq!(closed.load(Relaxed), 2);
        // Asking for more than there are sheds what is left.
        assert_eq!(idle.shed_oldest(10), 2);
        assert_eq!(idle.shed_oldest(1), 0);
        assert!(idle.is_empty());
        // Asked but never completed (its request arrived first): not counted.
        assert_eq!(closed.load(Relaxed), 2);
        drop(guards);
        assert!(idle.is_empty());
    }

    #[test]
    fn leaving_unlinks_from_any_position_and_slots_are_reused() {
        let idle = IdleConnections::new();
        let noop = Waker::noop();
        let a = idle.enter();
        let b = idle.enter();
        let c = idle.enter();
        drop(b); // middle
        assert_eq!(idle.len(), 2);
        let d = idle.enter(); // reuses b's slot, but is the most recent
        assert_eq!(idle.list.borrow().slots.len(), 3);
        drop(a); // head
        assert_eq!(idle.shed_oldest(1), 1);
        assert!(poll_shed(&c, noop) && !poll_shed(&d, noop));
        drop(d); // tail
        assert!(idle.is_empty());
        drop(c);
        // Enter and leave many times: no growth past the peak.
        for _ in 0..100 {
            let g1 = idle.enter();
            let g2 = idle.enter();
            drop(g1);
            drop(g2);
        }
        assert_eq!(idle.list.borrow().slots.len(), 3);
        let l = idle.list.borrow();
        assert_eq!((l.head, l.tail, l.len), (NIL, NIL, 0));
    }

    #[test]
    fn rate_limit_writes_one_line_per_interval_with_the_counts() {
        let mut r = RateLimit::default();
        assert_eq!(r.note(0, false), Some([1, 0, 0]));
        for _ in 0..40 {
            assert_eq!(r.note(16, true), None);
        }
        r.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(r.note(1, false), Some([41, 641, 40]));
        assert_eq!(r.note(0, false), None);
    }

    #[test]
    fn claim_address_refuses_a_port_someone_listens_on() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = claim_address(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("Address already in use"),
            "{msg}"
        );
        drop(l);
        claim_address(addr).unwrap();
        // A port in TIME_WAIT from an earlier connection is not "in use".
        let l = std::net::TcpListener::bind(addr).unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(s);
        drop(c);
        drop(l);
        claim_address(addr).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            let e = claim_address(v6.local_addr().unwrap()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        }
    }

    #[test]
    fn fd_budget_raises_the_soft_limit_up_to_the_hard_one() {
        let text = "[server]\nworkers = 2\nmax_connections = 1000\nmax_inflight = 100\n\
                    [[channels]]\nname = \"c\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\n\
                    keys = [\"k\"]\nmodels = [\"*\"]\n[[tokens]]\nname = \"t\"\nkey = \"tk\"\nmodels = [\"*\"]\n";
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let b = FdBudget::with_limits(&config, 1024, 4096);
        assert_eq!(
            b.needed,
            1000 + 100 + FD_RESERVE_BASE + 2 * FD_RESERVE_PER_WORKER
        );
        assert_eq!(b.target_soft(), b.needed);
        assert!(b.warning(&config).is_none());
        let b = FdBudget::with_limits(&config, 1024, 1024);
        assert_eq!(b.target_soft(), 1024);
        let w = b.warning(&config).expect("hard limit too low");
        assert!(
            w.contains("max_connections (1000)") && w.contains("allows 1024"),
            "{w}"
        );
        // Never lowered.
        let b = FdBudget::with_limits(&config, 100_000, u64::MAX);
        assert_eq!(b.target_soft(), 100_000);
    }
}
