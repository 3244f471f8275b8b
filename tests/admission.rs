//! Exact admission: `server.max_inflight` holds for the whole process, not per worker (a
//! per-worker share let 6 requests in at once with `max_inflight = 5` on 2 workers). Real
//! binary, 2 workers on one port, both io drivers.

mod common;

use std::time::Duration;

use common::*;

both_drivers! {
    max_inflight_holds_across_workers,
}

fn max_inflight_holds_across_workers(driver: Driver) {
    let mock = Mock::start();
    let cfg = ConfigBuilder::new(mock.addr)
        .workers(2)
        .server("max_inflight = 5");
    let relay = start(driver, &cfg);
    for round in 0..3 {
        let before = mock.stats().requests;
        // Twelve clients at once, each on its own connection (the kernel spreads them over
        // both workers), each asking for an answer that takes 1.5 s.
        let mut clients: Vec<Client> = (0..12).map(|_| relay.client()).collect();
        for c in &mut clients {
            c.send(&chat("mock-stall-head-1500", false));
        }
        let mut ok = 0;
        let mut refused = 0;
        for c in &mut clients {
            let r = c.read_final_response();
            match r.status {
                200 => ok += 1,
                503 => {
                    assert_error_shape(&r, 503, Some("overloaded"));
                    assert_eq!(r.header("retry-after"), Some("1"));
                    refused += 1;
                }
                s => panic!("round {round}: unexpected status {s}: {}", r.text()),
            }
        }
        assert_eq!((ok, refused), (5, 7), "round {round}");
        // The refused requests never reached the upstream.
        assert!(mock
            .wait_requests(before + 5, Duration::from_secs(5))
            .is_some());
        assert_eq!(mock.stats().requests, before + 5, "round {round}");
    }
    let h = relay.health();
    assert_eq!(json_u64(&h, "overloaded"), 21);
    assert_eq!(json_u64(&h, "inflight_requests"), 0);
}
