//! 10. Clients and scanners at once (`--false-positives-only`): real clients on 64
//!     addresses (48 IPv4, 16 IPv6 each in a /64 of its own) with keep-alive HTTP, many
//!     short connections, a restart of the keep-alive service with connections open, and
//!     every client trying one closed watched port once, for `--fp-secs` seconds (30),
//!     while nmap's SYN scan of the top 1000 ports runs from an IPv4 and an IPv6 source
//!     (`portsentry_tests::client_load`). Under PortSentry's trigger (SCAN_TRIGGER 0 and
//!     3) and SCAN_DETECTION="trw": the clients wrongly banned, and what each scanner got
//!     before its ban.

use portsentry_tests::client_load::{Plan, measure};

pub(crate) fn false_positives(secs: u64) {
    let modes = [
        ("trigger, `SCAN_TRIGGER=\"0\"` (the default)", ""),
        ("trigger, `SCAN_TRIGGER=\"3\"`", "SCAN_TRIGGER=\"3\"\n"),
        ("`SCAN_DETECTION=\"trw\"`", "SCAN_DETECTION=\"trw\"\n"),
    ];
    println!(
        "## Clients and scanners at once: clients wrongly banned, and what the scanners got \
         ({secs} s)\n"
    );
    println!(
        "| detection | clients banned | short connections/s | keep-alive requests/s | client \
         failures | IPv4 nmap: watched ports answered, all closed ports answered, SYN-ACKs, banned | IPv6 nmap: same | \
         bans by the program |"
    );
    println!("|---|---:|---:|---:|---:|---|---|---:|");
    for (name, extra) in modes {
        let plan = Plan {
            secs: secs as f64,
            short_threads: 8,
            scan_at: 0.2,
            crash_at: 0.4,
        };
        let o = measure(extra, 48, 16, &plan);
        let scanner = |i: usize| {
            let s = &o.scanners[i];
            format!(
                "{}, {}, {}, {}",
                s.probes_answered,
                s.closed_answered,
                s.syn_acks,
                if s.banned { "yes" } else { "**no**" }
            )
        };
        println!(
            "| {name} | {} of {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            o.banned_clients.len(),
            o.clients,
            o.short_rate(),
            o.request_rate(),
            o.client_failures,
            scanner(0),
            scanner(1),
            o.kernel_bans,
        );
    }
    println!();
}
