//! Workers: one OS thread per core, each with its own monoio runtime, listener and state.
//!
//! Owns: starting the runtimes (io_uring with the measured-best ring flags, falling back to
//! monoio's epoll driver when io_uring cannot be set up), pinning each thread to one allowed
//! CPU, binding one SO_REUSEPORT listener per worker, the accept loop, and the per-worker
//! background tasks (timing-wheel driver, pool janitor, health log line).
//!
//! Must not: share mutable state between workers. Everything a request touches is in its
//! worker's [`Worker`]; the only cross-thread data are the read-only config/routing table and
//! the monitor's single-writer counters.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use crate::bufpool::BufPool;
use crate::config::Config;
use crate::monitor::{self, Monitor};
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
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
    let listen = shared.config.server.listen;
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
            let _ = ready.send(Ok(listen));
            let worker = Rc::new(new_worker(id, workers, config, router, monitor, tls));
            serve(worker, listener, reaper).await;
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
        upstreams: Upstreams::new(&router, tls, config.timeouts.pool_idle, monitor, id, seed),
        max_inflight: (config.server.max_inflight as u64)
            .div_ceil(workers as u64)
            .max(1),
        next_request: Cell::new(0),
        started_nanos,
        activity: Default::default(),
        config,
        router,
        monitor,
    }
}

async fn serve(worker: Rc<Worker>, listener: TcpListener, reaper: crate::busy::Reaper) {
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
                let _ = stream.set_nodelay(true);
                // The connection task is the only task a request ever gets: it owns the client
                // socket, its buffers and its timer, and everything is released when it ends.
                monoio::spawn(crate::relay::serve_connection(worker.clone(), stream));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on accept.
                crate::log::warn(&format!("accept failed: {e}"));
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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
