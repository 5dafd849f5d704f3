//! Differential test: random frames through the kernel program (BPF_PROG_TEST_RUN) and
//! through the host build of the same parser and classifier (`packet::classify`). Every
//! frame must get the verdict and the verdict reason the host predicts, and none may be
//! XDP_ABORTED.
//!
//! The frame count defaults to 1,000,000 (PORTSENTRY_DIFF_FRAMES overrides it); the seed
//! is printed, and PORTSENTRY_DIFF_SEED replays a run.

use portsentry_common::{Counter, maps::Settings, packet};
use portsentry_tests::{
    fixture::Fixture,
    frames::random_frame,
    require_kernel,
    testrun::{self, XDP_PASS},
};
use portsentry_user::config::ports::PortSet;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn kernel_and_host_classify_random_frames_alike() {
    require_kernel!();
    let frames = env_u64("PORTSENTRY_DIFF_FRAMES").unwrap_or(1_000_000);
    let seed = env_u64("PORTSENTRY_DIFF_SEED").unwrap_or_else(|| fastrand::u64(..));
    eprintln!("differential: {frames} frames, seed {seed} (PORTSENTRY_DIFF_SEED={seed} replays)");
    // Every port watched (for the ACK class too), no ban, no ignore list, no socket in
    // the fixture's namespace, BLOCK_EVASIVE_PACKETS off:
    // a frame the host classifies as a probe must be counted as one by the kernel.
    let mut fx = Fixture::with_settings(Settings {
        event_trigger: 1,
        events_per_sec: 1,
        event_burst: 1,
        flags: 0,
        cookie_secret: 0,
        trw: Default::default(),
    });
    let all = PortSet::from_range(0..=u16::MAX);
    fx.dp.write_ports(&all, &all).unwrap();
    fx.dp.write_ack_ports(&all).unwrap();
    let fd = fx.dp.program_fd().unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut by_reason = [0u64; Counter::COUNT as usize];
    let start_total = fx.dp.counters().unwrap().packets();
    let mut checked_total = 0u64;
    let mut expected_total = 0u64;
    for i in 0..frames {
        let frame = random_frame(&mut rng);
        let want = match packet::classify(frame.as_slice()) {
            Ok(_) => Counter::PassProbe,
            Err(reason) => reason,
        };
        let before = fx.dp.counter(want).unwrap();
        let r = fx.ns.enter(|| testrun::run(fd, &frame, 1)).unwrap();
        let after = fx.dp.counter(want).unwrap();
        // The one verdict not counted moves no counter (a frame counted elsewhere
        // shows in the totals below).
        let counted = u64::from(want.is_counted());
        expected_total += counted;
        assert_eq!(
            (r.retval, after - before),
            (XDP_PASS, counted),
            "frame {i} (seed {seed}): host says {want:?}, kernel returned {} without counting it \
             there; frame: {frame:02x?}",
            r.retval
        );
        by_reason[want as usize] += 1;
        if i % 65_536 == 65_535 || i + 1 == frames {
            // No other reason was counted meanwhile: the totals agree.
            let total = fx.dp.counters().unwrap().packets() - start_total;
            assert_eq!(
                total, expected_total,
                "seed {seed}: some frame was counted twice or elsewhere"
            );
            checked_total = i + 1;
        }
    }
    assert_eq!(checked_total, frames);
    for c in Counter::ALL.iter().filter(|c| c.is_verdict()) {
        eprintln!("  {:<18} {}", c.name(), by_reason[*c as usize]);
    }
    // The generator reaches every verdict reason but the ban and ignore paths (none set).
    for c in [
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassFragment,
        Counter::PassOtherProto,
        Counter::PassNotProbe,
        Counter::PassProbe,
    ] {
        assert!(by_reason[c as usize] > 0, "no frame reached {c:?}");
    }
}
