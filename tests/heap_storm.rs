//! Leak check by live heap bytes: the fault storm of `fault_storm` (normal, streamed, upstream
//! 429/503/504, resets, stalls cut by short timeouts, huge error bodies, broken chunked framing,
//! clients vanishing mid-stream) against real workers started in this process, with a global
//! allocator that counts the bytes allocated and not yet freed.
//!
//! RSS (checked in `fault_storm` on the real binary) is the allocator's view: freed pages come
//! back to the OS when the allocator decides, so it drifts with fragmentation. Live bytes are
//! exact: once a storm has ended and the relay has settled, every byte a request owned must be
//! free again. The mock upstream runs as a separate `ringway mock` process so its allocations
//! are not counted; the storm's client threads have ended (and freed theirs) before a reading.

mod common;
mod storm;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use storm::*;

struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

const STORM_REQUESTS: u64 = 20_000;
const STORM_CONCURRENCY: usize = 200;
/// Storms measured after the warm-up one.
const MEASURED_STORMS: usize = 3;
/// What a settled relay may hold beyond the previous reading, whatever the request count: the
/// idle upstream pool's size varies from storm to storm (2 to 7 connections, about 4.5 KB each,
/// measured). A leak of 8 bytes per request would add 160 KB per storm; the sum over all
/// measured storms is held to the same bound.
const SLACK_BYTES: i64 = 128 * 1024;

/// 16 KiB: the size of one pooled IO buffer (`io_buffers_idle` counts them).
const IO_BUFFER_BYTES: i64 = 16 * 1024;

fn health(relay_addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let mut c = Client::try_connect(relay_addr).ok()?;
    c.send(&get("/api/monitor/health", &[("connection", "close")]));
    let r = c.try_read_response().ok()?;
    serde_json::from_slice(&r.body).ok()
}

/// Live bytes held by requests, once the relay has no request in flight, no upstream
/// connection in use and no client connection but the health check's own: the allocator's
/// live bytes less the free IO buffers the workers keep for reuse (a bounded pool whose fill
/// differs from storm to storm). The reading is taken after the workers' janitors have
/// published the pool's fill (once a second) with nothing else running.
fn settled_live(relay_addr: std::net::SocketAddr) -> (i64, serde_json::Value) {
    let mut h = serde_json::Value::Null;
    let ok = wait_for(Duration::from_secs(10), || {
        h = health(relay_addr).unwrap_or_default();
        json_u64(&h, "inflight_requests") == 0
            && json_u64(&h, "upstream_connections_active") == 0
            && json_u64(&h, "client_connections") <= 1
    });
    assert!(ok.is_some(), "relay did not settle within 10 s: {h}");
    std::thread::sleep(Duration::from_millis(1300));
    let live = LIVE.load(Relaxed);
    let h = health(relay_addr).expect("health after settling");
    let pooled = json_u64(&h, "io_buffers_idle") as i64 * IO_BUFFER_BYTES;
    eprintln!(
        "  live {live}, pooled buffers {pooled}, idle upstream {}",
        json_u64(&h, "upstream_connections_idle")
    );
    (live - pooled, h)
}

#[test]
#[cfg_attr(
    not(feature = "demo"),
    ignore = "runs `ringway mock`: needs the demo feature"
)]
fn fault_storms_leave_no_live_heap_behind() {
    let (_mock, mock_addr) = mock_process();
    let port = free_port();
    let toml = ConfigBuilder::new(mock_addr)
        .workers(2)
        .section(
            "[timeouts]\nresponse_header = \"1500ms\"\nstream_idle = \"1500ms\"\ntotal = \"30s\"\n",
        )
        .render(port);
    let config = ringway::parse(&toml, std::path::Path::new("<heap-storm>")).unwrap();
    let _running = ringway::start(config).unwrap();
    let relay_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (warm_report, _) = storm(relay_addr, STORM_REQUESTS, STORM_CONCURRENCY);
    assert_storm_clean("warm-up storm", &warm_report, STORM_REQUESTS);
    let (mut before, h) = settled_live(relay_addr);
    let warm = before;
    eprintln!(
        "warm-up storm: live heap {warm} bytes, idle upstream pool {}",
        json_u64(&h, "upstream_connections_idle")
    );
    for round in 1..=MEASURED_STORMS {
        let (report, took) = storm(relay_addr, STORM_REQUESTS, STORM_CONCURRENCY);
        assert_storm_clean("storm", &report, STORM_REQUESTS);
        let (after, h) = settled_live(relay_addr);
        eprintln!(
            "storm {round}: {STORM_REQUESTS} requests in {took:?}; live heap {before} -> {after} \
             bytes ({:+}), idle upstream pool {}; {}",
            after - before,
            json_u64(&h, "upstream_connections_idle"),
            summary(&report)
        );
        assert!(
            after - before <= SLACK_BYTES,
            "storm {round} left {} live heap bytes behind ({before} -> {after}; bound \
             {SLACK_BYTES}): {h}",
            after - before
        );
        before = after;
    }
    assert!(
        before - warm <= SLACK_BYTES,
        "{MEASURED_STORMS} storms left {} live heap bytes behind the warm-up reading ({warm} -> \
         {before}; bound {SLACK_BYTES})",
        before - warm
    );
}
