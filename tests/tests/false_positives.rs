//! Clients and scanners at once (`portsentry_tests::client_load`): keep-alive HTTP, many
//! short connections, a restart of the keep-alive service with connections open, and
//! every client trying one closed watched port, while nmap scans from an IPv4 and an
//! IPv6 source. With SCAN_DETECTION="trw" no client is banned and each scanner is cut
//! off by the program; under PortSentry's trigger (SCAN_TRIGGER="0") every client is
//! banned, which is what the TRW mode is for.
//!
//! How many closed ports a scanner gets answered under TRW depends on the open ports it
//! finds after its first closed one: each is a success that takes back one failure. The
//! walk is clamped at the benign bound (0.0101 with the defaults), from which 7 failures
//! reach the scanner bound (0.0101 x 4^7 = 165 >= 99), so a scanner is banned by the
//! program at its 8th closed port at the latest: at most 7 answered, whatever it found.
//! A scanner that finds no open port is banned at its 4th (3 answered). Failures are the
//! distinct bits of the record's 256-bit port filter: a port that shares a bit with an
//! earlier one (about one 4-port scan in 40) is answered without counting, one more; the
//! bounds below allow two such.

use portsentry_tests::{
    client_load::{Outcome, Plan, measure},
    require_kernel,
};

fn clients_and_scanners(extra: &str) -> Outcome {
    let plan = Plan {
        secs: 8.0,
        short_threads: 4,
        scan_at: 0.2,
        crash_at: 0.4,
    };
    let o = measure(extra, 24, 8, &plan);
    eprintln!("{o:?}");
    assert_eq!(o.closed_tries, 32, "every client tried its closed port");
    assert!(
        o.short_connections > 0 && o.requests > 0,
        "the clients were served: {o:?}"
    );
    o
}

#[test]
fn trw_bans_both_scanners_in_the_kernel_and_no_client() {
    require_kernel!();
    let o = clients_and_scanners("SCAN_DETECTION=\"trw\"\n");
    assert_eq!(o.banned_clients, Vec::<std::net::IpAddr>::new(), "{o:?}");
    for s in &o.scanners {
        assert!(s.banned, "{} was not banned: {o:?}", s.addr);
        assert!(
            s.probes_answered <= 9 && (s.syn_acks > 0 || s.probes_answered <= 5),
            "{} had {} probes answered: {o:?}",
            s.addr,
            s.probes_answered
        );
    }
}

#[test]
fn portsentrys_trigger_bans_every_client_that_tried_a_closed_port() {
    require_kernel!();
    let o = clients_and_scanners("");
    assert_eq!(o.banned_clients.len(), o.clients, "{o:?}");
    // The scanners' answers are not checked here: the clients' bans share the kernel's
    // MAX_BANS_PER_SEC budget with the scanners', and a scanner whose first probe comes
    // when the budget is spent is banned by the daemon, a few probes later.
    for s in &o.scanners {
        assert!(s.banned, "{}: {o:?}", s.addr);
    }
}
