//! The TCP ports a socket of this host listens on (in the daemon's network namespace):
//! a segment with ACK to such a port is never looked up as a possible ACK scan
//! (`PS_ACK_PORTS`), so established traffic to a service costs one bitmap read.
//!
//! Read from `/proc/net/tcp` and `/proc/net/tcp6`. The kernel lists every listening
//! socket before any other (its iterator walks the listening hash, then the established
//! one), so the read stops at the first line in another state: its cost grows with the
//! listeners, not with the connections of a busy server.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::{Context as _, Result};

use super::ports::PortSet;

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// Every TCP port with a listening socket, IPv4 or IPv6, on any address.
pub fn tcp_ports() -> Result<PortSet> {
    let mut ports = PortSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let path = Path::new(file);
        match File::open(path) {
            Ok(f) => read_listeners(BufReader::new(f), &mut ports)
                .with_context(|| format!("reading {file}"))?,
            // No IPv6 in this kernel: no IPv6 listeners.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening {file}")),
        }
    }
    Ok(ports)
}

/// Adds the local port of each listening socket in a `/proc/net/tcp` text, up to the
/// first socket in another state.
fn read_listeners(text: impl BufRead, ports: &mut PortSet) -> std::io::Result<()> {
    for line in text.lines().skip(1) {
        let line = line?;
        // "  sl  local_address rem_address   st ...": local is ADDR:PORT in hex.
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) =
            (fields.nth(1), fields.next(), fields.next())
        else {
            continue;
        };
        if state != TCP_LISTEN {
            break;
        }
        if let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        {
            ports.insert(port);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_up_to_the_first_other_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:0016 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        let mut ports = PortSet::new();
        read_listeners(text.as_bytes(), &mut ports).unwrap();
        assert_eq!(ports.iter().collect::<Vec<_>>(), [22, 8080]);
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0
";
        read_listeners(v6.as_bytes(), &mut ports).unwrap();
        assert_eq!(ports.iter().collect::<Vec<_>>(), [22, 443, 8080]);
    }

    #[test]
    fn this_hosts_listeners_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_ports().unwrap().contains(port));
    }
}
