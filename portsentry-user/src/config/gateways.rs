//! The gateways of this host's routes: every next hop of every route in every routing
//! table (multipath routes and `via` included) and of every nexthop object routes may
//! name by id, read from the kernel over rtnetlink.
//!
//! A ban of a gateway cuts the host off: an IPv6 router's neighbour solicitations and
//! router advertisements come from its address, and so do an IPv4 router's DHCP replies
//! and ICMP errors; a probe forged "from" the gateway must not get it banned. The daemon
//! keeps the list current: a [`RouteWatch`] hears of every route change, and the routes
//! are read again, off the daemon's loop, at most once every [`RouteWatch::MIN_INTERVAL`]
//! (or ten times as long as the last read took), so that a host with a large, busy
//! routing table does not dump it every second.
//!
//! The same reads find the destinations of this host's local routes (the addresses it
//! answers on, and any range an `ip route add local` made), for the program's filter of
//! this host's addresses ([`local_routes`]).

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use ipnet::IpNet;
use netlink_packet_core::{NLA_TYPE_MASK, NetlinkBuffer, NlasIterator};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::rtnl::{self, RECV_BUF};

/// Every gateway of every route on this host (in this network namespace), sorted and
/// deduplicated.
pub(crate) fn gateways() -> Result<Vec<IpAddr>> {
    let routes = rtnl::request(RouteNetlinkMessage::GetRoute(RouteMessage::default()), true)
        .context("listing the gateways of this host's routes (an rtnetlink route dump)")?;
    let mut found = Vec::new();
    let mut local = Vec::new();
    for m in routes {
        if let RouteNetlinkMessage::NewRoute(route) = m {
            next_hops(&route.attributes, &mut found);
            if let Some(net) = local_destination(&route) {
                local.push(net);
            }
        }
    }
    local.sort();
    local.dedup();
    *LOCAL_ROUTES.lock().expect("local routes lock") = Some(local);
    let nexthops = nexthop_gateways(&mut found);
    found.sort();
    found.dedup();
    match nexthops {
        Ok(()) => Ok(found),
        Err(error) => Err(NexthopsUnread {
            routes: found,
            error,
        }
        .into()),
    }
}

/// A read of the gateways whose nexthop objects could not be read: the gateways the
/// routes name themselves, which a caller with none better protects meanwhile.
#[derive(Debug)]
pub(crate) struct NexthopsUnread {
    pub(crate) routes: Vec<IpAddr>,
    error: anyhow::Error,
}

impl std::fmt::Display for NexthopsUnread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for NexthopsUnread {}

/// The destinations of the local routes (and anycast ones) the last route read found:
/// what the kernel delivers to this host. Set by every read of the gateways.
static LOCAL_ROUTES: Mutex<Option<Vec<IpNet>>> = Mutex::new(None);

/// The destinations of this host's local and anycast routes in every table, as the
/// last read of the routes found them; `None` before the first.
pub(crate) fn local_routes() -> Option<Vec<IpNet>> {
    LOCAL_ROUTES.lock().expect("local routes lock").clone()
}

/// The destination of a local or anycast route (the kernel delivers what it covers to
/// this host), `None` for any other route.
fn local_destination(route: &RouteMessage) -> Option<IpNet> {
    if !matches!(route.header.kind, RouteType::Local | RouteType::Anycast) {
        return None;
    }
    let len = route.header.destination_prefix_length;
    let given = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    // No destination: the whole family (`local default`).
    let addr = match (given, route.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

/// The gateways a route's attributes name: its own, and each multipath next hop's.
fn next_hops(attributes: &[RouteAttribute], found: &mut Vec<IpAddr>) {
    for a in attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(v4))
            | RouteAttribute::Via(RouteVia::Inet(v4)) => found.push(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6))
            | RouteAttribute::Via(RouteVia::Inet6(v6)) => found.push(IpAddr::V6(*v6)),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    next_hops(&hop.attributes, found);
                }
            }
            _ => {}
        }
    }
}

/// rtnetlink's nexthop objects (`ip nexthop`), which the crates have no message for.
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_GATEWAY: u16 = 6;
/// The multicast group of nexthop objects' changes.
const RTNLGRP_NEXTHOP: u32 = 32;
/// struct nhmsg: family, scope, protocol, reserved, flags (u32); all zero asks for
/// every nexthop of both families.
const NHMSG_LEN: usize = 8;

/// The gateway of every nexthop object (`ip nexthop add id N via GW`). A route that uses
/// one names only its id (RTA_NH_ID) once `net.ipv4.nexthop_compat_mode` is 0, as
/// routing daemons set it: its gateway is found here, or nowhere.
fn nexthop_gateways(found: &mut Vec<IpAddr>) -> Result<()> {
    let replies = match rtnl::request_raw(RTM_GETNEXTHOP, &[0; NHMSG_LEN], true) {
        Ok(r) => r,
        // A kernel without nexthop objects has none to protect.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EOPNOTSUPP) =>
        {
            return Ok(());
        }
        Err(e) => {
            return Err(e.context("listing the gateways of this host's nexthop objects"));
        }
    };
    for reply in &replies {
        nexthop_gateway(reply, found);
    }
    Ok(())
}

/// The gateway of one RTM_NEWNEXTHOP message (header included), if it has one.
fn nexthop_gateway(message: &[u8], found: &mut Vec<IpAddr>) {
    let Ok(framed) = NetlinkBuffer::new_checked(message) else {
        return;
    };
    let Some((header, attributes)) = (framed.message_type() == RTM_NEWNEXTHOP)
        .then(|| framed.payload().split_at_checked(NHMSG_LEN))
        .flatten()
    else {
        return;
    };
    let family = i32::from(header[0]);
    for nla in NlasIterator::new(attributes).flatten() {
        if nla.kind() & NLA_TYPE_MASK != NHA_GATEWAY {
            continue;
        }
        match (family, nla.value()) {
            (libc::AF_INET, v) => {
                if let Ok(a) = <[u8; 4]>::try_from(v) {
                    found.push(IpAddr::from(a));
                }
            }
            (libc::AF_INET6, v) => {
                if let Ok(a) = <[u8; 16]>::try_from(v) {
                    found.push(IpAddr::from(a));
                }
            }
            _ => {}
        }
    }
}

/// Hears of route changes (a netlink socket in the IPv4 and IPv6 route groups) and
/// reads the routes again after one, off the caller's thread: a full routing table takes
/// a while to dump. Without the socket, the routes are read every
/// [`RouteWatch::MIN_INTERVAL`].
pub(crate) struct RouteWatch {
    socket: Option<Socket>,
    /// A change was heard that no read since has seen.
    pending: bool,
    /// When the last read began.
    last_read: Instant,
    /// The wait between reads: [`Self::MIN_INTERVAL`], or ten times the last read's
    /// length when that is longer (a busy full table is not dumped back to back).
    interval: Duration,
    reading: Option<JoinHandle<(Result<Vec<IpAddr>>, Duration)>>,
    /// The last read failed (its error was handed out).
    failing: bool,
}

/// What [`RouteWatch::poll`] found.
pub(crate) enum Read {
    /// Nothing new: the gateways in force stand.
    Unchanged,
    /// The gateways, read again.
    Fresh(Vec<IpAddr>),
    /// A read failed (it is tried again); `first` of a run of failures.
    Failed { error: anyhow::Error, first: bool },
}

impl RouteWatch {
    /// The routes are read again at most this often.
    pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(5);

    /// Starts listening. The gateways in force were read before it listened, so they
    /// are read once more after [`Self::MIN_INTERVAL`]. When no socket can listen, the
    /// error says so, and the routes are read every [`Self::MIN_INTERVAL`].
    pub(crate) fn new() -> (RouteWatch, Option<anyhow::Error>) {
        let listen = || -> std::io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            let groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
            socket.bind(&SocketAddr::new(0, groups))?;
            // A nexthop object's change (its gateway replaced) is no route change once
            // the kernel's compatibility mode is off; a kernel without them has none.
            let _ = socket.add_membership(RTNLGRP_NEXTHOP);
            socket.set_non_blocking(true)?;
            Ok(socket)
        };
        let (socket, error) = match listen() {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(anyhow::Error::new(e).context(
                    "listening for route changes (rtnetlink); the gateways of this host's \
                     routes are read every 5 s instead",
                )),
            ),
        };
        let watch = RouteWatch {
            socket,
            pending: true,
            last_read: Instant::now(),
            interval: Self::MIN_INTERVAL,
            reading: None,
            failing: false,
        };
        (watch, error)
    }

    /// Called about once a second: the result of a read that has ended, if any; and a
    /// new read begun when a route changed since the last one began (or notifications
    /// were lost) and the interval has passed.
    pub(crate) fn poll(&mut self) -> Read {
        self.drain();
        let mut read = Read::Unchanged;
        if self.reading.as_ref().is_some_and(JoinHandle::is_finished) {
            let handle = self.reading.take().expect("checked above");
            let (result, took) = handle.join().unwrap_or_else(|_| {
                (
                    Err(anyhow!("the route reader's thread panicked")),
                    Duration::ZERO,
                )
            });
            self.interval = Self::MIN_INTERVAL.max(took * 10);
            read = match result {
                Ok(gateways) => {
                    self.failing = false;
                    Read::Fresh(gateways)
                }
                Err(error) => {
                    self.pending = true;
                    let first = !std::mem::replace(&mut self.failing, true);
                    Read::Failed { error, first }
                }
            };
        }
        if self.reading.is_none() && self.pending && self.last_read.elapsed() >= self.interval {
            let spawned = std::thread::Builder::new().name("routes".into()).spawn(|| {
                let began = Instant::now();
                (gateways(), began.elapsed())
            });
            if let Ok(handle) = spawned {
                self.pending = false;
                self.last_read = Instant::now();
                self.reading = Some(handle);
            }
        }
        read
    }

    /// Takes the notifications queued: any means a route changed.
    fn drain(&mut self) {
        let Some(socket) = &self.socket else {
            self.pending = true;
            return;
        };
        let mut buf = vec![0_u8; RECV_BUF];
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => break,
                Ok(_) => self.pending = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ENOBUFS: notifications were lost; read the routes to be sure.
                Err(_) => {
                    self.pending = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netlink_packet_route::route::RouteNextHop;

    use super::*;

    #[test]
    fn every_next_hop_of_a_route() {
        let hop = |gw: IpAddr| {
            let mut h = RouteNextHop::default();
            h.attributes = vec![RouteAttribute::Gateway(gw.into())];
            h
        };
        let attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(192, 0, 2, 1))),
            RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap())),
            RouteAttribute::MultiPath(vec![
                hop("198.51.100.1".parse().unwrap()),
                hop("2001:db8::1".parse().unwrap()),
            ]),
            RouteAttribute::Oif(2),
        ];
        let mut found = Vec::new();
        next_hops(&attributes, &mut found);
        let want: Vec<IpAddr> = ["192.0.2.1", "fe80::1", "198.51.100.1", "2001:db8::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn the_destination_of_a_local_route() {
        let route = |kind, len, dest: Option<IpAddr>, family| {
            let mut r = RouteMessage::default();
            r.header.kind = kind;
            r.header.destination_prefix_length = len;
            r.header.address_family = family;
            if let Some(d) = dest {
                r.attributes.push(RouteAttribute::Destination(match d {
                    IpAddr::V4(a) => RouteAddress::Inet(a),
                    IpAddr::V6(a) => RouteAddress::Inet6(a),
                }));
            }
            local_destination(&r).map(|n| n.to_string())
        };
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        let v6 = |s: &str| Some(IpAddr::V6(s.parse().unwrap()));
        assert_eq!(
            route(RouteType::Local, 32, v4("192.0.2.1"), AddressFamily::Inet).as_deref(),
            Some("192.0.2.1/32")
        );
        assert_eq!(
            route(RouteType::Local, 24, v4("203.0.113.7"), AddressFamily::Inet).as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            route(
                RouteType::Anycast,
                128,
                v6("2001:db8::"),
                AddressFamily::Inet6
            )
            .as_deref(),
            Some("2001:db8::/128")
        );
        assert_eq!(
            route(RouteType::Local, 0, None, AddressFamily::Inet6).as_deref(),
            Some("::/0")
        );
        for other in [
            RouteType::Unicast,
            RouteType::Broadcast,
            RouteType::Multicast,
        ] {
            assert_eq!(route(other, 32, v4("192.0.2.1"), AddressFamily::Inet), None);
        }
    }

    #[test]
    fn the_gateway_of_a_nexthop_object() {
        let message = |kind: u16, family: i32, gateway: &[u8]| {
            let nla = |kind: u16, value: &[u8]| {
                let mut a = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
                a.extend(kind.to_ne_bytes());
                a.extend(value);
                a.resize(a.len().next_multiple_of(4), 0);
                a
            };
            let mut body = vec![family as u8, 0, 0, 0, 0, 0, 0, 0];
            body.extend(nla(1, &7_u32.to_ne_bytes())); // NHA_ID
            body.extend(nla(5, &2_u32.to_ne_bytes())); // NHA_OIF
            body.extend(nla(NHA_GATEWAY, gateway));
            let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
            m.extend(kind.to_ne_bytes());
            m.extend([0; 10]);
            m.extend(body);
            let mut found = Vec::new();
            nexthop_gateway(&m, &mut found);
            found
        };
        let v6: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(
            message(RTM_NEWNEXTHOP, libc::AF_INET, &[192, 0, 2, 1]),
            vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]
        );
        assert_eq!(
            message(RTM_NEWNEXTHOP, libc::AF_INET6, &v6.octets()),
            vec![IpAddr::V6(v6)]
        );
        // Another message, or a gateway of the wrong length, names none.
        assert!(message(RTM_NEWNEXTHOP + 1, libc::AF_INET, &[192, 0, 2, 1]).is_empty());
        assert!(message(RTM_NEWNEXTHOP, libc::AF_INET, &v6.octets()).is_empty());
    }

    #[test]
    fn a_route_dump_reads() {
        // Whatever this machine's routes are, the dump parses to the end.
        gateways().unwrap();
    }
}
