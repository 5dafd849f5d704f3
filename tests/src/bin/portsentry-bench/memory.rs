//! 3. Memory: the daemon's resident memory per ban (the kernel's is in `per_packet`),
//!    its start-up with a million bans on record, and the ban journal's throughput and
//!    recovery time.

use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use portsentry_tests::{
    daemon::{Daemon, Workdir},
    netns::TestNet,
    scenario::{self, scan_ban},
};
use portsentry_user::bans::{
    Ban, BanStore, Rec,
    blocked::{self, BlockedFiles},
    journal::{self, Journal},
};

use crate::filler;

/// Writes a journal of `n` bans (as a compaction would: one record each).
fn write_journal(state_dir: &std::path::Path, n: u32) {
    scenario::write_journal(state_dir, (0..n).map(|i| IpNet::from(filler(i))));
}

/// Resident memory of `pid` now and at its peak, in bytes.
pub(crate) fn rss(pid: u32) -> (u64, u64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `portsentry ARGS` for `wd` with its output in `out`: whether it succeeded, how
/// long it took and its peak resident memory in bytes (`wait4`'s `ru_maxrss`: this
/// process's, not the bench's other children's).
#[allow(clippy::zombie_processes)] // reaped by wait4, which `Child::wait` cannot give the usage of
fn cli_peak(wd: &Workdir, args: &[&str], out: &std::path::Path) -> (bool, Duration, u64) {
    let t = Instant::now();
    let child = std::process::Command::new(portsentry_tests::daemon::binary())
        .args(args)
        .arg("-c")
        .arg(wd.conf())
        .stdout(std::fs::File::create(out).expect("creating the output file"))
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("running portsentry");
    let mut status = 0;
    // SAFETY: a zeroed rusage for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, reaping it (the `Child` is not waited on again).
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let took = t.elapsed();
    assert_eq!(
        rc,
        child.id() as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, took, usage.ru_maxrss as u64 * 1024)
}

/// CPU time `pid` has used so far, all its threads together: in the process itself
/// (user) and in the kernel on its behalf (system: the verification of the program and
/// every map read and write). A steadier figure than the start-up's wall time on a
/// shared machine.
pub(crate) fn cpu_time(pid: u32) -> (Duration, Duration) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the
    // 14th and 15th of the line, the 12th and 13th after it.
    let after = st.rfind(')').map_or("", |i| &st[i + 1..]);
    let mut ticks = after
        .split_whitespace()
        .skip(11)
        .map(|v| v.parse::<u64>().unwrap_or(0));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut next = || Duration::from_millis(ticks.next().unwrap_or(0) * 1000 / hz);
    (next(), next())
}

/// The daemon's resident memory and start-up with no bans and with `n` bans on record
/// in its journal (bytes per ban = the difference / n): after a reboot (no pinned maps:
/// every ban is written to the kernel) and after a restart (the pinned maps kept).
pub(crate) fn daemon_memory(n: u32) {
    struct Row {
        case: String,
        rss: u64,
        peak: u64,
        started: Duration,
        cpu: (Duration, Duration),
        journal_line: String,
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut ops = String::new();
    for bans in [0, n] {
        let net = TestNet::new(0);
        let wd = Workdir::new();
        let conf = wd.config(&net.server_if, &format!("MAX_BANS=\"{}\"\n", n + 16));
        write_journal(&wd.path("state"), bans);
        for case in ["boot", "restart"] {
            let t = Instant::now();
            let d = Daemon::start(&net.server, &["run", "-c", conf.to_str().unwrap()]);
            let started = t.elapsed();
            let cpu = cpu_time(d.child.id());
            // Settled: the first second's housekeeping writes the blocked files (a
            // million lines with a million bans); RSS once it stops moving.
            std::thread::sleep(Duration::from_secs(2));
            let mut last = rss(d.child.id()).0;
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(500));
                let now = rss(d.child.id()).0;
                if now.abs_diff(last) * 200 < last {
                    break;
                }
                last = now;
            }
            let (now_rss, peak) = rss(d.child.id());
            if bans > 0 && case == "restart" {
                // What an operator does at this size, through the running daemon.
                let json = wd.path("status.json");
                let (ok, status, json_peak) = cli_peak(&wd, &["status", "--json"], &json);
                assert!(ok, "status --json failed");
                let listed = std::io::BufRead::lines(std::io::BufReader::new(
                    std::fs::File::open(&json).unwrap(),
                ))
                .filter(|l| l.as_ref().is_ok_and(|l| l.contains("\"net\"")))
                .count();
                let _ = std::fs::remove_file(&json);
                let text = wd.path("status.txt");
                let (ok, text_took, text_peak) = cli_peak(&wd, &["status"], &text);
                assert!(ok, "status failed");
                let _ = std::fs::remove_file(&text);
                let victim = filler(bans / 2).to_string();
                let t = Instant::now();
                let (ok, _, err) = wd.cli(&["unban", &victim]);
                let unban = t.elapsed();
                assert!(ok, "unban {victim}: {err}");
                let t = Instant::now();
                let (ok, _, err) = wd.cli(&["ban", &victim]);
                let ban = t.elapsed();
                assert!(ok, "ban {victim}: {err}");
                ops = format!(
                    "With {bans} bans, through the running daemon: `portsentry status --json` \
                     {status:.2?} ({listed} bans listed; the command's peak {:.1} MiB), \
                     `portsentry status` {text_took:.2?} (peak {:.1} MiB), `portsentry unban \
                     ADDR` {unban:.2?}, `portsentry ban ADDR` {ban:.2?} (each a process of \
                     its own, answered once the change is on disk).",
                    json_peak as f64 / 1048576.0,
                    text_peak as f64 / 1048576.0,
                );
            }
            let journal_line = d
                .lines()
                .into_iter()
                .filter(|l| {
                    [
                        "ban journal read",
                        "kernel maps:",
                        "bans restored in",
                        "not verified again",
                        "the kernel verified the program in",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                })
                .filter_map(|l| {
                    Some(l[l.find("portsentry: ")? + "portsentry: ".len()..].to_owned())
                })
                .collect::<Vec<_>>()
                .join("; ");
            d.stop();
            let case = match case {
                "boot" => format!("{bans}, no pinned maps (a reboot)"),
                _ => format!("{bans}, pinned maps kept (a restart)"),
            };
            rows.push(Row {
                case,
                rss: now_rss,
                peak,
                started,
                cpu,
                journal_line,
            });
        }
    }
    println!("## Daemon memory (VmRSS once settled after start-up; peak = VmHWM)\n");
    println!(
        "| bans on record | RSS | peak | start-up | CPU to start: user + system |\n\
         |---|---:|---:|---:|---:|"
    );
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.2?} | {:.2?} + {:.2?} |",
            r.case,
            r.rss as f64 / 1048576.0,
            r.peak as f64 / 1048576.0,
            r.started,
            r.cpu.0,
            r.cpu.1
        );
    }
    // Rows: no bans after a reboot and a restart, then `n` bans after each.
    let per = (rows[2].rss as f64 - rows[0].rss as f64) / f64::from(n);
    let peak_per = (rows[2].peak as f64 - rows[0].peak as f64) / f64::from(n);
    println!(
        "\nDaemon memory per ban: {per:.0} bytes (peak {peak_per:.0}), plus 112 bytes in the \
         kernel map (above). Start-up with {n} bans minus start-up with none: {:.2?} after a \
         reboot, {:.2?} after a restart.",
        rows[2].started.saturating_sub(rows[0].started),
        rows[3].started.saturating_sub(rows[1].started),
    );
    for r in &rows[2..] {
        println!("- {}: {}", r.case, r.journal_line);
    }
    println!("\n{ops}\n");
}

/// The ban journal alone, in this process, on the file system of a temporary folder:
/// durable bans per second (each ban's writer waiting for its fsync, 1 and 16 writers at
/// once: the daemon runs up to 16 responses), and the time to recover `n` bans.
pub(crate) fn journal(n: u32, secs: u64) {
    println!("## Ban journal (STATE_DIR/bans.journal)\n");
    println!(
        "| writers, each waiting for its ban's fsync | durable bans/s | fsyncs/s | bans per fsync |\n|---:|---:|---:|---:|"
    );
    for writers in [1u32, 16] {
        let dir = tempfile::tempdir().unwrap();
        let (j, _, _) = Journal::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let stop = Instant::now() + Duration::from_secs(secs);
        let t = Instant::now();
        let fsyncs_before = j.fsyncs();
        let total: u32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..writers)
                .map(|w| {
                    let j = j.clone();
                    s.spawn(move || {
                        let mut k = 0u32;
                        while Instant::now() < stop {
                            let ban = scan_ban(IpNet::from(filler(w * 10_000_000 + k)), now);
                            let seq = j.put(&ban);
                            j.wait(seq).unwrap();
                            k += 1;
                        }
                        k
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let took = t.elapsed().as_secs_f64();
        let fsyncs = j.fsyncs() - fsyncs_before;
        j.close().unwrap();
        let back = journal::read(&journal::path(dir.path())).unwrap().unwrap();
        assert_eq!(
            back.store.len(),
            total as usize,
            "every durable ban reads back"
        );
        println!(
            "| {writers} | {:.0} | {:.0} | {:.1} |",
            f64::from(total) / took,
            fsyncs as f64 / took,
            f64::from(total) / fsyncs.max(1) as f64
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write_journal(dir.path(), n);
    let bytes = std::fs::metadata(journal::path(dir.path())).unwrap().len();
    // Read it once to have it in the page cache, as after the daemon wrote it.
    let _ = std::fs::read(journal::path(dir.path())).unwrap();
    let me = std::process::id();
    let (rss_before, _) = rss(me);
    let t = Instant::now();
    let (j, store, _) = Journal::open(dir.path()).unwrap();
    let took = t.elapsed();
    let (rss_after, _) = rss(me);
    assert_eq!(store.len(), n as usize);
    let t = Instant::now();
    j.compact_now(&store).unwrap();
    let compact = t.elapsed();
    // Expiry: the once-a-second check with none due, then with one due.
    let mut timed = store;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let t = Instant::now();
    assert!(timed.expired(SystemTime::now()).is_empty());
    let idle = t.elapsed();
    timed.insert(Ban {
        expires: Some(later),
        ..scan_ban(IpNet::from(filler(n)), SystemTime::now())
    });
    let t = Instant::now();
    assert!(timed.expired(SystemTime::now()).is_empty());
    let idle_timed = t.elapsed();
    let t = Instant::now();
    assert_eq!(timed.expired(later).len(), 1);
    let due = t.elapsed();
    // Every ban made to end within the hour from 2 s after `later` (as a CrowdSec list's
    // do, all day long): the expiry index's memory, and the check at a second that holds
    // some. The checks go on from `later` (the wall clock going forward, as the daemon's
    // do: one set back builds the index again).
    timed.remove(&IpNet::from(filler(n)));
    let (rss_untimed, _) = rss(me);
    let spread =
        |i: u32| later + Duration::from_millis(2_000 + u64::from(i) * 3_600_000 / u64::from(n));
    for i in 0..n {
        timed.insert(Ban {
            expires: Some(spread(i)),
            ..scan_ban(IpNet::from(filler(i)), SystemTime::now())
        });
    }
    let (rss_timed, _) = rss(me);
    let t = Instant::now();
    assert!(timed.expired(later).is_empty());
    let idle_all = t.elapsed();
    // The check at the end of the first 1/3600 of them: their second's bans are read.
    let at = spread(n / 3600);
    let t = Instant::now();
    let ending = timed.expired(at).len();
    let due_all = t.elapsed();
    assert!(ending > 0);
    // What the index adds to a start's recovery: the store built from the same records,
    // timed and not.
    let build = |timed: bool| {
        let recs: Vec<(IpNet, Rec)> = (0..n)
            .map(|i| {
                let net = IpNet::from(filler(i));
                let ban = Ban {
                    expires: timed.then(|| spread(i)),
                    ..scan_ban(net, SystemTime::now())
                };
                (net, Rec::of(&ban))
            })
            .collect();
        let t = Instant::now();
        let s = BanStore::from_sorted(recs, Default::default(), Default::default());
        let took = t.elapsed();
        drop(s);
        took
    };
    let (built_untimed, built_timed) = (build(false), build(true));
    // The blocked files of a million bans: written in place (the book held throughout),
    // then rewritten apart (the book held for the copy only).
    let blocked_dir = tempfile::tempdir().unwrap();
    let file = blocked_dir.path().join("portsentry.blocked");
    let t = Instant::now();
    BlockedFiles::new(file.clone()).write(&timed, true).unwrap();
    let in_place = t.elapsed();
    let mut files = BlockedFiles::new(file);
    let t = Instant::now();
    files.write(&timed, false).unwrap();
    let held = t.elapsed();
    files.write(&timed, true).unwrap();
    let apart = t.elapsed();
    let how = if timed.len() >= blocked::REWRITE_APART_FROM {
        "apart"
    } else {
        "in place again (too few bans to go apart)"
    };
    j.close().unwrap();
    println!(
        "\nRecovery of a journal of {n} bans ({:.1} MiB, {} bytes a ban): {took:.2?} \
         (read, checksums, the store built). A compaction of it (written, fsynced, renamed): \
         {compact:.2?}. The store it built: {:.0} bytes of resident memory a ban. The \
         once-a-second expiry check over it: {idle:.1?} with no timed ban, {idle_timed:.1?} \
         with none due, {due:.1?} when one is due. With all {n} bans ending within an hour: \
         the expiry index {:.0} bytes of resident memory a ban ({} entries), the check \
         {idle_all:.1?} with none due, {due_all:.1?} at a second when {ending} are due; the \
         store built from their records in {built_timed:.1?} ({built_untimed:.1?} for as many \
         that never end). The blocked files of {n} bans: written in {in_place:.1?} in place; \
         rewritten {how} in {apart:.1?}, the book held {held:.1?} of it (the copy).\n",
        bytes as f64 / 1048576.0,
        journal::PUT_SIZE,
        (rss_after as f64 - rss_before as f64) / f64::from(n),
        (rss_timed as f64 - rss_untimed as f64) / f64::from(n),
        timed.expiry_entries(),
    );
}
