//! What the BPF_PROG_TEST_RUN tests (`tests/xdp_*.rs`) share: the documentation addresses
//! they send from and to, and the two verdict checks almost every test makes.

use std::net::IpAddr;

use ipnet::IpNet;
use portsentry_common::{Counter, ScanType};

use crate::{fixture::Fixture, testrun::XDP_PASS};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub const V4_SRC: &str = "192.0.2.7";
pub const V4_DST: &str = "192.0.2.1";
pub const V6_SRC: &str = "2001:db8::7";
pub const V6_DST: &str = "2001:db8::1";

/// The (source, destination) pairs every family-agnostic test runs over: IPv4, then IPv6.
pub fn pairs() -> [(IpAddr, IpAddr); 2] {
    [(ip(V4_SRC), ip(V4_DST)), (ip(V6_SRC), ip(V6_DST))]
}

/// Asserts that `frame` is a counted probe of `kind` to `port` from `src`.
pub fn assert_probe(fx: &mut Fixture, frame: &[u8], src: IpAddr, port: u16, kind: ScanType) {
    let hits = fx.hits(src);
    fx.expect(frame, XDP_PASS, Counter::PassProbe);
    let s = fx.dp.source(src).unwrap().expect("source tracked");
    assert_eq!(s.hits, hits + 1, "hits of {src}");
    assert_eq!(s.last_port, port);
    assert_eq!(
        ScanType::from_u8(s.last_scan_type),
        Some(kind),
        "scan type of {src}"
    );
}

/// Asserts that `frame` passes for `reason` and leaves `src` untracked.
pub fn assert_uncounted(fx: &mut Fixture, frame: &[u8], src: IpAddr, reason: Counter) {
    let hits = fx.hits(src);
    fx.expect(frame, XDP_PASS, reason);
    assert_eq!(fx.hits(src), hits, "{src} must not be counted");
}

/// The first two addresses of 198.18.0.0/15 whose `PS_BAN_FILTER` places meet in a bit
/// (a ban sets up to three bits of one word), with that place of each.
pub fn sharing_a_filter_bit() -> (
    (IpAddr, portsentry_common::maps::BanFilterPlace),
    (IpAddr, portsentry_common::maps::BanFilterPlace),
) {
    let v4 = |n: u32| IpAddr::from((0xc612_0000u32 + n).to_be_bytes());
    let place = |n: u32| {
        portsentry_common::maps::ban_filter_place(&bytemuck::cast(
            portsentry_user::kernel::addr::to_key(v4(n)),
        ))
    };
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..1u32 << 17)
        .find_map(|n| {
            let p = place(n);
            match seen.insert(p.word(), n) {
                Some(m) if place(m).mask & p.mask != 0 => Some((m, n)),
                _ => None,
            }
        })
        .expect("two addresses whose filter bits meet");
    ((v4(a), place(a)), (v4(b), place(b)))
}
