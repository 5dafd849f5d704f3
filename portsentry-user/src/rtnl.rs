//! One request over rtnetlink and the kernel's replies (a dump's messages, or the one
//! answer), built and parsed by the rust-netlink crates.
//!
//! A reply the crates cannot parse (an attribute newer than they know, say) is skipped,
//! not taken as a failure of the whole request: a route or a link this code does not
//! need must not stop the daemon.

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Room for one datagram: a dump's hold up to about 32 KiB.
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// A dump the kernel marks interrupted (the table changed while it was read) is asked
/// for again, this many times in all.
const DUMP_TRIES: usize = 3;

/// Sends `message` (as a dump request when `dump`) and returns the kernel's replies: every
/// message of a dump, or the one answer.
pub(crate) fn request(
    message: RouteNetlinkMessage,
    dump: bool,
) -> Result<Vec<RouteNetlinkMessage>> {
    for _ in 0..DUMP_TRIES {
        if let Replies::Whole(r) = exchange(&message, dump)? {
            return Ok(r);
        }
    }
    bail!("the kernel's dump was interrupted by changes {DUMP_TRIES} times in a row")
}

enum Replies {
    Whole(Vec<RouteNetlinkMessage>),
    /// A dump with NLM_F_DUMP_INTR: the table changed while it was read.
    Interrupted,
}

fn exchange(message: &RouteNetlinkMessage, dump: bool) -> Result<Replies> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message.clone()));
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut replies = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0_u8; RECV_BUF];
    loop {
        // A datagram longer than the buffer is cut short, and its last message fails
        // `new_checked` below.
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at < size {
            let framed = NetlinkBuffer::new_checked(&buf[at..size])
                .context("reading the kernel's rtnetlink reply")?;
            let len = framed.length() as usize;
            interrupted |= framed.flags() & NLM_F_DUMP_INTR != 0;
            // A message the crates cannot parse is skipped (see the module's note).
            if let Ok(reply) =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..at + len])
            {
                match reply.payload {
                    NetlinkPayload::Done(d) if d.code != 0 => {
                        bail!("{}", std::io::Error::from_raw_os_error(-d.code))
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => bail!("{}", e.to_io()),
                    NetlinkPayload::Done(_) | NetlinkPayload::Error(_) if interrupted && dump => {
                        return Ok(Replies::Interrupted);
                    }
                    NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => {
                        return Ok(Replies::Whole(replies));
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump {
                            return Ok(Replies::Whole(replies));
                        }
                    }
                    _ => {}
                }
            } else if !dump {
                // The one answer, unreadable: no answer.
                return Ok(Replies::Whole(replies));
            }
            // Messages are aligned to 4 bytes.
            at += (len + 3) & !3;
        }
    }
}
