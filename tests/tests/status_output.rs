//! `portsentry status` with many bans on record: every ban listed, in text and in JSON,
//! in the order of networks; and a reader that stops reading (`status | head`) ends it
//! quietly, not with an error. No kernel needed: without pins the journal's bans are
//! listed as held.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
};

use ipnet::IpNet;
use portsentry_tests::{
    daemon::{Workdir, binary},
    scenario,
};

/// Enough bans that the listing outgrows a pipe's buffer (64 KiB) many times over.
const BANS: u32 = 5000;

fn ban(i: u32) -> IpNet {
    IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)))
}

fn workdir() -> Workdir {
    let wd = Workdir::new();
    wd.config("lo", "");
    scenario::write_journal(&wd.path("state"), (0..BANS).map(ban));
    wd
}

#[test]
fn every_ban_is_listed_in_text_and_in_json() {
    let wd = workdir();
    let (ok, text, err) = wd.cli(&["status"]);
    assert!(ok, "status: {err}");
    assert!(
        text.contains(&format!("bans:       {BANS}\n")),
        "{text:.400}"
    );
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("bans:"))
        .skip(1)
        .collect();
    assert_eq!(listed.len(), BANS as usize);
    for (i, l) in listed.iter().enumerate() {
        let net = l.split_whitespace().next().unwrap();
        assert_eq!(net, ban(i as u32).to_string(), "line {i}: {l}");
        assert!(l.contains(", since "), "{l}");
    }

    let (ok, json, err) = wd.cli(&["status", "--json"]);
    assert!(ok, "status --json: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    let bans = v["bans"].as_array().expect("a list of bans");
    assert_eq!(bans.len(), BANS as usize);
    for (i, b) in bans.iter().enumerate() {
        assert_eq!(b["net"], ban(i as u32).to_string(), "{b}");
        assert_eq!(b["in_kernel"], true, "no pins: held, {b}");
        assert!(b["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{b}");
    }
    assert_eq!(v["loaded"], false);
}

#[test]
fn a_reader_that_stops_reading_ends_it_quietly() {
    let wd = workdir();
    for json in [false, true] {
        let mut cmd = Command::new(binary());
        cmd.arg("status").arg("-c").arg(wd.conf());
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running portsentry status");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // The reading end closed after one line, as `head -1` does.
        let out = child.wait_with_output().unwrap();
        assert!(!first.is_empty());
        assert!(
            out.status.success(),
            "json {json}: {:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "json {json}");
    }
}
