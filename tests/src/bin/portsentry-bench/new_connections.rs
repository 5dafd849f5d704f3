//! 8. What a legitimate new connection (a SYN to a listener) costs under
//!    SCAN_DETECTION="trigger" and "trw", in the same run (`--new-connections-only`): from a
//!    source with no record (the common client: one `PS_SOURCES` miss more under trw) and
//!    from one with a record (a source that once probed a closed port: its walk counts the
//!    success). BPF_PROG_TEST_RUN repeats one frame, so a listener's port is a first contact
//!    only at the first run: the later runs find it marked. The SYN to a closed unwatched
//!    port is never marked, so each of its runs pays what a first contact pays (the record's
//!    lookup and a socket lookup).

use std::{net::TcpListener, os::fd::AsFd as _};

use portsentry_common::maps::{SETTING_DROP_EVASIVE, SETTING_TRW, Settings};
use portsentry_tests::{
    frames::{Frame, flags::*},
    netns::Netns,
    testrun,
};
use portsentry_user::{config::Config, kernel::MapSizes};

use crate::{Args, bench_dataplane, ip};

pub(crate) fn new_connections(args: &Args) {
    let ns = Netns::new("bench-conn");
    let pass = testrun::load_pass_program().expect("loading the XDP_PASS program");
    let sizes = MapSizes::default();
    let trigger = bench_dataplane(None, &sizes, &[]);
    let mut trw = bench_dataplane(None, &sizes, &[]);
    trw.write_settings(Settings {
        flags: SETTING_DROP_EVASIVE | SETTING_TRW,
        trw: Config::default().walk(),
        ..trw.settings()
    })
    .unwrap();
    let _listeners = ns.enter(|| {
        [
            TcpListener::bind("0.0.0.0:8080").unwrap(),
            TcpListener::bind("0.0.0.0:25").unwrap(),
        ]
    });
    let (client, known, scanner, server) = (
        ip("192.0.2.7"),
        ip("198.51.100.9"),
        ip("198.51.100.77"),
        ip("192.0.2.1"),
    );
    let frames = [
        (
            "benign established TCP (ACK)",
            Frame::tcp(client, server, 443, ACK).build(),
        ),
        (
            "SYN to an unwatched listener, no record (a client)",
            Frame::tcp(client, server, 8080, SYN).build(),
        ),
        (
            "SYN to an unwatched listener, source with a record",
            Frame::tcp(known, server, 8080, SYN).build(),
        ),
        (
            "SYN to a closed unwatched port, source with a record",
            Frame::tcp(known, server, 9000, SYN).build(),
        ),
        (
            "SYN to a watched listener, source with a record",
            Frame::tcp(known, server, 25, SYN).build(),
        ),
        (
            "counted SYN probe",
            Frame::tcp(scanner, server, 23, SYN).build(),
        ),
    ];
    // `known` probed a closed port once (one failure: far from the bound).
    let probe = Frame::tcp(known, server, 1, SYN).build();
    for dp in [&trigger, &trw] {
        let fd = dp.program_fd().unwrap();
        ns.enter(|| testrun::run(fd, &probe, 1)).expect("probe");
    }
    let mut cases = vec![("floor", pass.as_fd(), frames[0].1.clone())];
    for dp in [&trigger, &trw] {
        let fd = dp.program_fd().unwrap();
        cases.extend(frames.iter().map(|(n, f)| (*n, fd, f.clone())));
    }
    let m = ns.enter(|| crate::per_packet::medians(&cases, args));
    println!(
        "## New connections: SCAN_DETECTION=trigger and trw (BPF_PROG_TEST_RUN, ns per packet, \
         median of {} rounds x {} runs; XDP_PASS only: {} ns)\n",
        args.rounds, args.repeat, m[0]
    );
    println!("| case | trigger | trw | trw - trigger |");
    println!("|---|---:|---:|---:|");
    let n = frames.len();
    for (i, (name, _)) in frames.iter().enumerate() {
        let (a, b) = (m[1 + i], m[1 + n + i]);
        println!("| {name} | {a} | {b} | {:+} |", i64::from(b) - i64::from(a));
    }
    assert!(
        trw.source(client).unwrap().is_none(),
        "the client has no record"
    );
    let s = trw.source(known).unwrap().expect("tracked");
    println!(
        "\n(the trw source with a record after the run: {} failures, {} successes)\n",
        s.distinct_ports, s.successes
    );
}
