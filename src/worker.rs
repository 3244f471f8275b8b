//! Workers: one OS thread per core, each with its own monoio runtime, listener and state.
//!
//! Owns: starting the runtimes (io_uring with the measured-best ring flags, falling back to
//! monoio's epoll driver when io_uring cannot be set up), pinning each thread to one allowed
//! CPU, the accept loop with its connection bound and fd reserve, and the per-worker
//! background tasks (timing-wheel driver, pool janitor, health log line). The address check
//! and the listeners are `listen`'s (a worker binds one, or adopts one a previous ringway
//! handed over: `takeover`); the per-worker state is `context`'s; idle connections are
//! registered in `idle`.
//!
//! With `[server.tls]` each accepted connection's task begins with the TLS handshake (see
//! `relay::serve_tls_connection`), served the certificate of the config generation the worker
//! holds when it accepts.
//!
//! The accept loop's rules (docs/connections.md): a worker holds at most its share of
//! `max_connections`; at the bound, or when `accept` fails for want of file descriptors, it
//! closes its longest-idle keep-alive connections to make room, and only when none is idle does
//! it accept and close the new connection at once (a spare descriptor kept open for the purpose
//! makes that possible at the fd limit). Accept failures are logged at most once a second.
//!
//! Shutdown (see `lifecycle`): a per-worker task on the wheel bumps the worker's heartbeat every
//! [`HEARTBEAT`] and watches for a drain request. When one comes, the accept loop ends and the
//! listener is closed, idle connections are closed, the wheel gets the drain deadline as its
//! cutoff, and the worker's runtime returns once its last client connection ended (having
//! handed its access-log lines over). The pending accept is cancelled and awaited, not dropped,
//! so a connection it returned in that instant is served.
//!
//! Must not: share mutable state between workers, lock, or allocate per request.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::access_log::{AccessLog, Writer};
use crate::context::Worker;
use crate::lifecycle::{Lifecycle, HEARTBEAT};
use crate::listen::{bind, claim_address, duplicate};
use crate::monitor::{self, bump, Monitor};
use crate::reload::Generation;

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

/// Start `n` workers; returns their join handles once every listener is bound, with a
/// duplicate of each worker's listening socket (worker order, for `takeover::offer`), or the
/// first error. Worker `i` adopts `inherited[i]` when there is one (a takeover) instead of
/// binding; without any, the address is first checked to be free. Each worker reports its
/// driver through the monitor.
pub fn start(
    generation: &Arc<Generation>,
    monitor: &'static Monitor,
    n: usize,
    access_log: &mut Writer,
    lifecycle: &'static Lifecycle,
    inherited: Vec<OwnedFd>,
) -> io::Result<(Vec<std::thread::JoinHandle<()>>, Vec<OwnedFd>)> {
    let listen = generation.config.server.listen;
    if inherited.is_empty() {
        claim_address(listen)?;
    }
    let mut inherited = inherited.into_iter();
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<(usize, OwnedFd)>>();
    for id in 0..n {
        let generation = generation.clone();
        let log = access_log.take(id);
        let adopt = inherited.next();
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
                // Marks the worker finished however its thread ends.
                let finished = Finished {
                    lifecycle,
                    id,
                    ended: Cell::new(0),
                };
                finished.ended.set(run_worker(
                    id, listen, adopt, generation, monitor, log, ready, lifecycle,
                ));
            })?;
        handles.push(h);
    }
    drop(ready_tx);
    let mut listeners: Vec<Option<OwnedFd>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok((id, fd))) => listeners[id] = Some(fd),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker exited during start-up")),
        }
    }
    Ok((handles, listeners.into_iter().flatten().collect()))
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

/// Tells the lifecycle a worker's thread ended, with the requests its drain ended.
struct Finished {
    lifecycle: &'static Lifecycle,
    id: usize,
    ended: Cell<u64>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.lifecycle.finish(self.id, self.ended.get());
    }
}

/// Runs worker `id` until it has drained; returns how many requests the drain deadline ended.
#[allow(clippy::too_many_arguments)]
fn run_worker(
    id: usize,
    listen: SocketAddr,
    adopt: Option<OwnedFd>,
    generation: Arc<Generation>,
    monitor: &'static Monitor,
    access_log: Option<AccessLog>,
    ready: std::sync::mpsc::Sender<io::Result<(usize, OwnedFd)>>,
    lifecycle: &'static Lifecycle,
) -> u64 {
    // Taken by the runtime that starts (a failed io_uring attempt falls back to another).
    let access_log = std::cell::Cell::new(access_log);
    let adopt = std::cell::Cell::new(adopt);
    // The ring's fd is looked for only when the spinner will need it.
    let busy_poll = !generation.config.server.busy_poll.is_zero();
    let setup = move |driver: u8, reaper: crate::busy::Reaper| {
        let monitor = monitor;
        let generation = generation.clone();
        let ready = ready.clone();
        let access_log = access_log.take();
        let adopt = adopt.take();
        async move {
            monitor.workers[id].io_driver.store(driver, Relaxed);
            let listener = match adopt {
                Some(fd) => crate::listen::adopt(fd, driver == monitor::EPOLL),
                None => bind(listen),
            };
            let (listener, dup) = match listener.and_then(|l| duplicate(&l).map(|d| (l, d))) {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = ready.send(Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {listen}: {e}"),
                    )));
                    return 0;
                }
            };
            // Opened before the process counts as started, so it is part of the fd baseline.
            let admission = Admission::new();
            let _ = ready.send(Ok((id, dup)));
            let worker = Rc::new(Worker::new(id, &generation, monitor, access_log));
            serve(worker, listener, admission, reaper, lifecycle).await
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
                    return rt.block_on(setup(monitor::IO_URING, reaper));
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
            0
        }
    }
}

/// The worker's life: background tasks, the accept loop until a drain begins, then the wait
/// for its connections to end. Returns how many requests the drain deadline ended.
async fn serve(
    mut worker: Rc<Worker>,
    listener: TcpListener,
    mut admission: Admission,
    reaper: crate::busy::Reaper,
    lifecycle: &'static Lifecycle,
) -> u64 {
    monoio::spawn(worker.wheel.clone().drive());
    if !worker.config.server.busy_poll.is_zero() {
        use crate::busy::{spin, Reaper};
        match reaper {
            Reaper::Driver => drop(monoio::spawn(spin(
                worker.activity.clone(),
                worker.config.server.busy_poll,
                None,
            ))),
            Reaper::Ring(fd) => drop(monoio::spawn(spin(
                worker.activity.clone(),
                worker.config.server.busy_poll,
                Some(fd),
            ))),
            Reaper::Unknown => {
                crate::log::warn("busy_poll: this worker's ring was not found; busy polling is off")
            }
        }
    }
    // The background tasks hold what they use, not the worker: a reload's old generation
    // goes with its last request.
    monoio::spawn(janitor(worker.upstreams.pool.clone(), worker.bufs.clone()));
    if let Some(log) = &worker.access_log {
        monoio::spawn(access_log_flusher(log.clone()));
    }
    if worker.id == 0 {
        let every = worker.config.monitor.log_interval;
        monoio::spawn(health_logger(worker.monitor, every));
    }
    let stop_accepting = Rc::new(LocalEvent::default());
    let drained = Rc::new(LocalEvent::default());
    monoio::spawn(heartbeat(
        worker.clone(),
        lifecycle,
        stop_accepting.clone(),
        drained.clone(),
    ));
    let mut stall_next_accept = test_stall_on_accept();
    // The pending accept is cancelled and awaited when the drain begins, never just dropped:
    // an io_uring accept that completed at that moment still hands its connection over (it is
    // served), where a dropped one would leak it unanswered. That moment matters most when a
    // new process took the listeners over and this one stops accepting while they stay open.
    let mut canceller = monoio::io::Canceller::new();
    let mut last = false;
    while !last {
        let accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let mut accept = accept;
        let accepted = monoio::select! {
            biased;
            _ = stop_accepting.wait() => {
                std::mem::take(&mut canceller).cancel();
                last = true;
                match accept.await {
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => break,
                    r => r,
                }
            }
            r = &mut accept => r,
        };
        if let Some(stall) = stall_next_accept.take() {
            // Test-only (see `test_stall_on_accept`): block this worker's thread.
            std::thread::sleep(stall);
        }
        match accepted {
            Ok((stream, _peer)) => {
                // After a reload, new connections start on the newest config.
                if let Some(newer) = worker.newer() {
                    worker = newer;
                }
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
                // With `[server.tls]` it serves the certificate of the config that accepted it.
                match &worker.config.server.tls {
                    None => drop(monoio::spawn(async move {
                        let _slot = slot;
                        crate::relay::serve_connection(w, stream).await
                    })),
                    Some(tls) => {
                        let tls = tls.server.clone();
                        drop(monoio::spawn(async move {
                            let _slot = slot;
                            crate::relay::serve_tls_connection(w, stream, tls).await
                        }))
                    }
                }
            }
            Err(e) => {
                let pause = admission.accept_failed(&worker, listener.as_raw_fd(), &e);
                if !pause.is_zero() {
                    monoio::time::sleep(pause).await;
                }
            }
        }
    }
    // Closing the listener is what stops new connections: the kernel sends the next ones to
    // the listeners still open (another instance on the port), or refuses them.
    drop(listener);
    drained.wait().await;
    if let Some(log) = &worker.access_log {
        // Every line of this worker reaches the writer before the process exits (bounded: a
        // writer that stopped taking buffers costs its lines, counted as dropped).
        let give_up = Instant::now() + FLUSH_AT_EXIT;
        while !log.is_empty() && Instant::now() < give_up {
            log.flush();
            if !log.is_empty() {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    worker.drain.ended()
}

/// Longest a worker waits at exit for the access-log writer to take its last lines.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// Test-only: `RINGWAY_TEST_STALL_ON_ACCEPT_MS=N` makes each worker block its thread for N ms
/// after the first connection it accepts, so the tests can show that a stalled worker stops
/// the systemd watchdog pings. Never set in production; unset, it costs nothing.
fn test_stall_on_accept() -> Option<Duration> {
    let ms: u64 = std::env::var("RINGWAY_TEST_STALL_ON_ACCEPT_MS")
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(60_000)))
}

/// A one-shot event between two tasks of one worker: fired once, awaited by one task.
#[derive(Default)]
struct LocalEvent {
    fired: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl LocalEvent {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// Every [`HEARTBEAT`], on the worker's wheel: bump the heartbeat (so a worker whose loop no
/// longer turns stops the watchdog pings), and once a drain was asked for, drain this worker.
async fn heartbeat(
    mut worker: Rc<Worker>,
    lifecycle: &'static Lifecycle,
    stop_accepting: Rc<LocalEvent>,
    drained: Rc<LocalEvent>,
) {
    let timer = worker.wheel.timer();
    loop {
        timer.arm_after(HEARTBEAT);
        timer.expired().await;
        lifecycle.beat(worker.id);
        // Follow reloads, so this task never keeps an old generation alive.
        if let Some(newer) = worker.newer() {
            worker = newer;
        }
        let Some(until) = lifecycle.drain_until() else {
            continue;
        };
        if !worker.drain.is_draining() {
            // Order matters: connection tasks that run after this see the flag, and the ones
            // idle now are asked to close.
            worker.drain.begin();
            stop_accepting.fire();
            worker.wheel.set_cutoff(until);
        }
        // Again each beat: a connection that finished its request since then and went idle.
        worker.idle.shed_oldest(usize::MAX);
        if worker.connections.get() == 0 {
            drained.fire();
            return;
        }
    }
}

/// One client connection counted against the worker's `max_connections` share, from accept
/// until its task ends (or is dropped).
struct ConnSlot(Rc<std::cell::Cell<usize>>);

impl ConnSlot {
    fn new(worker: &Rc<Worker>) -> ConnSlot {
        worker.connections.set(worker.connections.get() + 1);
        ConnSlot(worker.connections.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
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
/// Hands this worker's access-log buffer to the writer thread every 100 ms.
async fn access_log_flusher(log: Rc<AccessLog>) {
    loop {
        monoio::time::sleep(crate::access_log::FLUSH_EVERY).await;
        log.flush();
    }
}

/// Closes idle upstream connections past `pool_idle`, and publishes how many free IO buffers
/// the worker keeps (`io_buffers_idle`), once a second.
async fn janitor(pool: Rc<crate::upstream::Pool>, bufs: Rc<crate::bufpool::BufPool>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        pool.sweep(Instant::now());
        pool.stats()
            .io_buffers_idle
            .store(bufs.idle() as u64, std::sync::atomic::Ordering::Relaxed);
        // Give memory freed after a burst back to the OS: mimalloc only purges when it runs,
        // and an idle worker would otherwise keep the burst's pages resident. Forced, so the
        // pages freed by other threads and the segment cache go too (`fault_storm` reads RSS
        // after this pass).
        // SAFETY: collects this thread's own mimalloc heap; no preconditions.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

async fn health_logger(monitor: &'static Monitor, every: Duration) {
    loop {
        monoio::time::sleep(every).await;
        monitor.log_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
