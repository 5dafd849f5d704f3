//! Deciding what a probe event means: ignored, not enough yet, too slow for the scan
//! window, already dealt with, or time to act ([`Rules::judge`]); and acting on that
//! decision for each event the kernel sends ([`on_event`]) and for scanners a previous
//! daemon detected but did not ban ([`recover_detected`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use portsentry_common::{
    Counter, PROTO_SCTP, ScanType,
    maps::{BanEntry, BanOrigin, SOURCE_PREFIX, SOURCE_VERIFIED, ScanEvent},
    trw::Walk,
};

use super::{Shared, event::ProbeEvent, respond};
use ipnet::IpNet;

use crate::{
    config::{BlockMode, Config, effective::Effective},
    kernel::configure,
    kinds::Protocol,
    report::alert,
};

/// What to do with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The source is in the ignore list or is this host.
    Ignored,
    /// Fewer hits than SCAN_TRIGGER, or a walk under its scanner bound (or, for the ACK
    /// class, fewer distinct ports than ACK_SCAN_PORTS).
    BelowTrigger,
    /// The trigger was reached, but over more than SCAN_WINDOW: the source's count
    /// starts again.
    OutsideWindow,
    /// The host was already acted on (banned, reported or its command run).
    AlreadyHandled,
    /// Act on the host now.
    Act,
}

/// The detection rules. `scan_trigger` has PortSentry's meaning (0 and 1 both act on
/// the first hit); a zero `window` means no window. A probe of the ACK class (a segment
/// of no connection) is acted on only once its source has probed `ack_scan_ports`
/// distinct ports: a client's late segments after a listener went away all go to the
/// one port it was talking to. Under SCAN_DETECTION="trw" (`walk`) the other types reach
/// the trigger when the source's walk does: the program's test, on the event's failed
/// (`distinct_ports`) and successful first contacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub scan_trigger: u32,
    /// The Threshold Random Walk (SCAN_DETECTION="trw"); `None` for SCAN_TRIGGER.
    pub walk: Option<Walk>,
    pub window: Duration,
    /// ACK_SCAN_PORTS; 0 never acts on the ACK class.
    pub ack_scan_ports: u32,
    /// PROTO_SCAN_PROTOCOLS: the same for IP-protocol probes (distinct protocols).
    pub proto_scan_protocols: u32,
}

impl Rules {
    /// The rules of a configuration (SCAN_TRIGGER, SCAN_WINDOW).
    pub fn new(c: &Config) -> Rules {
        Rules {
            scan_trigger: c.scan_trigger,
            walk: c.detection_walk(),
            window: c.scan_window,
            ack_scan_ports: c.ack_scan_ports,
            proto_scan_protocols: c.proto_scan_protocols,
        }
    }

    pub fn trigger(&self) -> u32 {
        self.scan_trigger.max(1)
    }

    pub fn judge(&self, ev: &ProbeEvent, ignored: bool, handled: bool) -> Verdict {
        if ignored {
            return Verdict::Ignored;
        }
        let spread = match ev.scan_type {
            t if t.is_ack_class() => self.ack_scan_ports,
            // SCTP where nothing serves it (the program counts protocol 132 only then):
            // nmap -sY's INITs all carry the one protocol, and no SCTP datagram to this
            // host can belong to an association, so one is a probe, as a SYN to a closed
            // port is (PROTO_SCAN_PROTOCOLS="0" still turns it off).
            ScanType::IpProto if ev.port == u16::from(PROTO_SCTP) => {
                self.proto_scan_protocols.min(1)
            }
            ScanType::IpProto => self.proto_scan_protocols,
            _ => 1,
        };
        let reached = match self.walk {
            Some(w) if ev.scan_type.walks() => w.is_scanner(ev.distinct_ports, ev.successes),
            _ => ev.hits >= self.trigger(),
        };
        if !reached || spread == 0 || ev.distinct_ports < spread {
            return Verdict::BelowTrigger;
        }
        if handled {
            return Verdict::AlreadyHandled;
        }
        if !self.window.is_zero()
            && ev.ts_ns.saturating_sub(ev.first_ns) > self.window.as_nanos() as u64
        {
            return Verdict::OutsideWindow;
        }
        Verdict::Act
    }
}

/// Acts on one probe event from the kernel.
pub(super) fn on_event(shared: &Arc<Shared>, raw: &ScanEvent) {
    let super::Current { eff, rules } = shared.current();
    let Some(ev) = ProbeEvent::from_raw(raw, eff.config.source_prefix_v6) else {
        return;
    };
    if ev.kernel_banned {
        kernel_banned(shared, &eff, &rules, ev);
        return;
    }
    let Some(mode) = eff.mode_token(ev.proto()) else {
        return;
    };
    if eff.config.verify_sources && !ev.verified {
        // VERIFY_SOURCES: a probe whose source has not answered the challenge may be
        // forged; it is counted, never acted on (and not logged: floods would flood
        // the log).
        shared.metrics.unverified();
        return;
    }
    let handled = shared.is_handled(ev.ip, ev.proto());
    match rules.judge(&ev, eff.is_ignored(ev.ip), handled) {
        Verdict::Ignored | Verdict::BelowTrigger => {}
        Verdict::OutsideWindow => {
            if let Some(dp) = shared.book().dp.as_mut()
                && let Err(e) = dp.forget_source(ev.ip)
            {
                shared.log.warn(&format!("portsentry: {e:#}"));
            }
        }
        Verdict::AlreadyHandled => {
            // Probes that raced the host's own response job are not logged as "already
            // blocked" before the block itself is.
            if !shared.book().covers(ev.ip) {
                return;
            }
            let name = respond::cached_name(shared, ev.ip);
            shared.log.notice(&alert::attack_alert(
                ev.scan_type,
                ev.tcp_flags,
                &name,
                ev.ip,
                ev.port,
            ));
            shared.log.notice(&alert::already_blocked(&name, ev.ip));
        }
        Verdict::Act => respond::act(shared, &eff, ev, mode, eff.block_mode(ev.proto())),
    }
}

/// A source the program banned itself at the trigger. The configuration in force (a
/// reload may have come between) and the ignore list decide: the daemon responds to the
/// ban as to its own, or lifts it, says so, and treats the probe as the configuration
/// now says.
fn kernel_banned(shared: &Arc<Shared>, eff: &Arc<Effective>, rules: &Rules, ev: ProbeEvent) {
    if shared.book().answers_for(&ev.source) {
        return;
    }
    // A host acted on without a ban (reported only, its command run, its ban failed)
    // goes on: the ban the kernel made now is taken over or lifted, never left in
    // force unrecorded. A response of the host still running bans it first, and this
    // one then stops as already blocked (`respond::scan_ban`).
    let mode = eff.mode_token(ev.proto());
    let ignored = eff.is_ignored(ev.ip);
    if let Some(mode) = mode.filter(|_| !ignored && configure::kernel_bans(eff, ev.proto())) {
        respond::act_banned(shared, eff, ev, mode);
        return;
    }
    let why = if ignored {
        "it is in the ignore list"
    } else {
        "the configuration in force does not ban at the trigger"
    };
    let lifted = match shared.book().dp.as_mut() {
        Some(dp) => dp.remove_ban(&ev.source),
        None => Ok(false),
    };
    match lifted {
        Ok(_) => shared.log.warn(&format!(
            "portsentry: lifted the ban the kernel made of {}: {why}",
            ev.ip
        )),
        Err(e) => shared.log.warn(&format!(
            "portsentry: lifting the ban the kernel made of {}: {e:#}",
            ev.ip
        )),
    }
    let Some(mode) = mode else {
        return;
    };
    let ev = ProbeEvent {
        kernel_banned: false,
        ..ev
    };
    if rules.judge(&ev, ignored, shared.is_handled(ev.ip, ev.proto())) == Verdict::Act {
        respond::act(shared, eff, ev, mode, eff.block_mode(ev.proto()));
    }
}

/// How often at most the kernel's bans are read for those whose event was lost.
const LOST_LOOK_EVERY: Duration = Duration::from_secs(10);

/// The state of [`recover_lost_bans`].
pub(super) struct LostLook {
    /// The program's count of lost events when the kernel's bans were last read.
    seen: u64,
    /// When they were last read.
    at: Option<Instant>,
    /// A read or its responses are under way.
    running: bool,
}

impl LostLook {
    /// None made yet; `lost` events counted when the bans the start responds to were
    /// read (a ban whose event was lost before is among them).
    pub(super) fn after(lost: u64) -> LostLook {
        LostLook {
            seen: lost,
            at: None,
            running: false,
        }
    }
}

/// Responds to the bans the program made at the trigger whose event the ring buffer had
/// no room for (the daemon behind a flood): the source's packets are dropped from then
/// on, so no later event brings it, and the ban would stay unrecorded (no kill command,
/// no journal record, gone at a reboot) until the next start. When the program's count
/// of lost events has grown, the kernel's bans are read (the pinned maps opened read-only,
/// off the event loop, at most every [`LOST_LOOK_EVERY`]) and those the daemon has not
/// taken over yet (origin `Kernel`) are responded to as at a start. One whose event is
/// still in the ring is then found banned already by its event's response.
pub(super) fn recover_lost_bans(shared: &Arc<Shared>) {
    let lost = match shared.book().dp.as_ref() {
        Some(dp) => dp.counter(Counter::EventLost).unwrap_or(0),
        None => return,
    };
    let before = {
        let mut look = shared.lost.lock().expect("lost lock");
        if lost <= look.seen
            || look.running
            || look.at.is_some_and(|t| t.elapsed() < LOST_LOOK_EVERY)
        {
            return;
        }
        let before = look.seen;
        *look = LostLook {
            seen: lost,
            at: Some(Instant::now()),
            running: true,
        };
        before
    };
    shared.log.warn(&format!(
        "portsentry: {} probe events lost (the ring buffer full: the daemon behind); \
         looking for bans of the kernel whose event was lost",
        lost - before
    ));
    let pin_dir = shared.eff().config.pin_dir.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let read = tokio::task::spawn_blocking(move || {
            crate::kernel::Dataplane::inspect_pinned(&pin_dir)?.bans()
        })
        .await;
        let failed = match read {
            Ok(Ok(bans)) => {
                // Not those a response that bans the host is under way for, or waits
                // for its turn (the program's ban is taken over only then): the host is
                // marked when its response starts. (A host reported only, or whose
                // command alone ran, has none coming: its ban is taken over here.) Nor
                // those a ban on record answers for (a wider one that has run out does
                // not: `Book::answers_for`).
                let pending: Vec<_> = bans
                    .into_iter()
                    .filter(|(net, e)| {
                        e.origin == BanOrigin::Kernel as u8
                            && ScanType::from_u8(e.scan_type).is_some_and(|t| {
                                !shared.ban_under_way(net.addr(), Protocol::of(t))
                                    && !shared.book().answers_for(net)
                            })
                    })
                    .collect();
                respond_to_pending(
                    &shared,
                    &pending,
                    "whose event the ring buffer had no room for",
                );
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(e) => Some(e.to_string()),
        };
        let mut look = shared.lost.lock().expect("lost lock");
        look.running = false;
        if let Some(e) = failed {
            // Tried again after LOST_LOOK_EVERY, not only once more events are lost.
            look.seen = before;
            drop(look);
            shared.log.warn(&format!(
                "portsentry: reading the kernel's bans for those whose event was lost: {e}"
            ));
        }
    });
}

/// Responds to the bans the program made at the trigger that no daemon responded to
/// (made while none ran, or their event lost: `why`): as to their event, dated when the
/// kernel made them.
pub(super) fn respond_to_pending(shared: &Arc<Shared>, pending: &[(IpNet, BanEntry)], why: &str) {
    let super::Current { eff, rules } = shared.current();
    for (net, e) in pending {
        let Some(scan_type) = ScanType::from_u8(e.scan_type) else {
            continue;
        };
        let ev = ProbeEvent {
            ip: net.addr(),
            source: *net,
            port: e.port,
            scan_type,
            tcp_flags: scan_type.example_flags(),
            hits: rules.trigger(),
            distinct_ports: 1,
            successes: 0,
            ts_ns: e.since_ns,
            first_ns: e.since_ns,
            ifindex: 0,
            verified: true,
            kernel_banned: true,
        };
        kernel_banned(shared, &eff, &rules, ev);
    }
    if !pending.is_empty() {
        shared.log.notice(&format!(
            "portsentry: {} sources banned by the kernel {why}; responding now",
            pending.len()
        ));
    }
}

/// Acts on sources the kernel counted past SCAN_TRIGGER that are not banned: their
/// event was read by a daemon that died before it banned them (or was lost). A banned
/// source's entry is removed when it is banned, so what is left here was never acted
/// on. Report-only hosts are skipped (they were reported; their entry stays).
pub(super) fn recover_detected(shared: &Arc<Shared>) {
    let super::Current { eff, rules } = shared.current();
    let sources = match shared.book().dp.as_ref().map(|dp| dp.sources()) {
        Some(Ok(s)) => s,
        _ => return,
    };
    let mut n = 0;
    for (ip, st) in sources {
        let Some(scan_type) = ScanType::from_u8(st.last_scan_type) else {
            continue;
        };
        let source = if st.flags & SOURCE_PREFIX != 0 {
            eff.config.source_net(ip)
        } else {
            IpNet::from(ip)
        };
        let ev = ProbeEvent {
            ip,
            source,
            port: st.last_port,
            scan_type,
            tcp_flags: scan_type.example_flags(),
            hits: st.hits,
            distinct_ports: st.distinct_ports,
            successes: u32::from(st.successes),
            ts_ns: st.last_ns,
            first_ns: st.first_ns,
            ifindex: 0,
            verified: st.flags & SOURCE_VERIFIED != 0,
            kernel_banned: false,
        };
        let Some(mode) = eff.mode_token(ev.proto()) else {
            continue;
        };
        let block = eff.block_mode(ev.proto());
        if block != BlockMode::Block
            || shared.is_handled(ip, ev.proto())
            || (eff.config.verify_sources && !ev.verified)
        {
            continue;
        }
        if rules.judge(&ev, eff.is_ignored(ip), false) == Verdict::Act {
            n += 1;
            respond::act(shared, &eff, ev, mode, block);
        }
    }
    if n > 0 {
        shared.log.notice(&format!(
            "portsentry: {n} scanners detected before the restart were not banned yet; \
             acting on them now"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(hits: u32, span_ms: u64) -> ProbeEvent {
        ProbeEvent {
            ip: "192.0.2.7".parse().unwrap(),
            source: "192.0.2.7/32".parse().unwrap(),
            port: 22,
            scan_type: ScanType::TcpSyn,
            tcp_flags: 2,
            hits,
            distinct_ports: hits,
            successes: 0,
            ts_ns: 10_000_000_000 + span_ms * 1_000_000,
            first_ns: 10_000_000_000,
            ifindex: 2,
            verified: false,
            kernel_banned: false,
        }
    }

    #[test]
    fn trigger_zero_and_one_act_on_the_first_hit() {
        for t in [0, 1] {
            let r = Rules {
                scan_trigger: t,
                walk: None,
                window: Duration::ZERO,
                ack_scan_ports: 3,
                proto_scan_protocols: 3,
            };
            assert_eq!(r.judge(&ev(1, 0), false, false), Verdict::Act);
        }
        let r = Rules {
            scan_trigger: 3,
            walk: None,
            window: Duration::ZERO,
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        assert_eq!(r.judge(&ev(2, 0), false, false), Verdict::BelowTrigger);
        assert_eq!(r.judge(&ev(3, 999_999), false, false), Verdict::Act);
    }

    #[test]
    fn ignored_and_handled() {
        let r = Rules {
            scan_trigger: 0,
            walk: None,
            window: Duration::ZERO,
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        assert_eq!(r.judge(&ev(5, 0), true, false), Verdict::Ignored);
        assert_eq!(r.judge(&ev(5, 0), true, true), Verdict::Ignored);
        assert_eq!(r.judge(&ev(5, 0), false, true), Verdict::AlreadyHandled);
    }

    #[test]
    fn the_ack_class_needs_distinct_ports() {
        let r = Rules {
            scan_trigger: 0,
            walk: None,
            window: Duration::ZERO,
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        let mut e = ev(50, 0);
        e.scan_type = ScanType::TcpAck;
        e.distinct_ports = 1;
        // A client's late segments: many hits, one port.
        assert_eq!(r.judge(&e, false, false), Verdict::BelowTrigger);
        e.distinct_ports = 3;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        e.scan_type = ScanType::TcpMaimon;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        let off = Rules {
            ack_scan_ports: 0,
            ..r
        };
        e.distinct_ports = 100;
        assert_eq!(off.judge(&e, false, false), Verdict::BelowTrigger);
        // IP protocols by PROTO_SCAN_PROTOCOLS.
        e.scan_type = ScanType::IpProto;
        e.distinct_ports = 2;
        assert_eq!(r.judge(&e, false, false), Verdict::BelowTrigger);
        e.distinct_ports = 3;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        // SCTP (nmap -sY) at one protocol, unless IP-protocol probes are off.
        e.port = PROTO_SCTP.into();
        e.distinct_ports = 1;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        let no_proto = Rules {
            proto_scan_protocols: 0,
            ..r
        };
        assert_eq!(no_proto.judge(&e, false, false), Verdict::BelowTrigger);
        e.port = 150;
        assert_eq!(r.judge(&e, false, false), Verdict::BelowTrigger);
        // Other types are not held to it.
        e.scan_type = ScanType::TcpSyn;
        e.distinct_ports = 1;
        assert_eq!(off.judge(&e, false, false), Verdict::Act);
    }

    #[test]
    fn window() {
        let r = Rules {
            scan_trigger: 3,
            walk: None,
            window: Duration::from_secs(10),
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        assert_eq!(r.judge(&ev(3, 9_000), false, false), Verdict::Act);
        assert_eq!(
            r.judge(&ev(3, 10_001), false, false),
            Verdict::OutsideWindow
        );
    }

    /// A slow scan (one probe an hour) reaches SCAN_TRIGGER="3" within SCAN_WINDOW="6h",
    /// not past it; with no window (PortSentry's) hits count for ever.
    #[test]
    fn a_slow_scan_over_hours() {
        const HOUR_MS: u64 = 3_600_000;
        let mut r = Rules {
            scan_trigger: 3,
            walk: None,
            window: Duration::from_secs(6 * 3600),
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        assert_eq!(r.judge(&ev(3, 2 * HOUR_MS), false, false), Verdict::Act);
        assert_eq!(r.judge(&ev(3, 6 * HOUR_MS), false, false), Verdict::Act);
        assert_eq!(
            r.judge(&ev(3, 7 * HOUR_MS), false, false),
            Verdict::OutsideWindow
        );
        r.window = Duration::ZERO;
        assert_eq!(
            r.judge(&ev(3, 30 * 24 * HOUR_MS), false, false),
            Verdict::Act
        );
    }

    #[test]
    fn the_walk_replaces_the_trigger() {
        let r = Rules {
            scan_trigger: 0,
            walk: Some(crate::config::Config::default().walk()),
            window: Duration::from_secs(10),
            ack_scan_ports: 3,
            proto_scan_protocols: 3,
        };
        // Three failed first contacts are not enough, whatever the hits; four are.
        let mut e = ev(50, 0);
        e.distinct_ports = 3;
        assert_eq!(r.judge(&e, false, false), Verdict::BelowTrigger);
        e.distinct_ports = 4;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        // Each success cancels a failure.
        e.successes = 1;
        assert_eq!(r.judge(&e, false, false), Verdict::BelowTrigger);
        e.distinct_ports = 5;
        assert_eq!(r.judge(&e, false, false), Verdict::Act);
        // SCAN_WINDOW still applies.
        e.ts_ns = e.first_ns + 10_000_000_001;
        assert_eq!(r.judge(&e, false, false), Verdict::OutsideWindow);
        // The ACK class keeps ACK_SCAN_PORTS (no walk): three ports act.
        let mut a = ev(3, 0);
        a.scan_type = ScanType::TcpAck;
        assert_eq!(r.judge(&a, false, false), Verdict::Act);
        // UDP walks like TCP.
        let mut u = ev(1, 0);
        u.scan_type = ScanType::Udp;
        assert_eq!(r.judge(&u, false, false), Verdict::BelowTrigger);
        u.distinct_ports = 4;
        assert_eq!(r.judge(&u, false, false), Verdict::Act);
    }
}
