//! One request over rtnetlink and the kernel's replies (a dump's messages, or the one
//! answer), built and parsed by the rust-netlink crates.
//!
//! A reply the crates cannot parse (an attribute newer than they know, say) is skipped,
//! not taken as a failure of the whole request: a route or a link this code does not
//! need must not stop the daemon.

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    Emitable, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
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
        if let Replies::Whole(r) = parsed(&message, dump)? {
            return Ok(r);
        }
    }
    bail!("the kernel's dump was interrupted by changes {DUMP_TRIES} times in a row")
}

/// Sends a request the rust-netlink crates have no message for (`kind`, with `body` after
/// the netlink header) and returns the kernel's replies whole, headers included: every
/// message of a dump, or the one answer. An error the kernel answers with is an
/// [`std::io::Error`] in the chain.
pub(crate) fn request_raw(kind: u16, body: &[u8], dump: bool) -> Result<Vec<Vec<u8>>> {
    let mut header = NetlinkHeader::default();
    header.message_type = kind;
    header.length = (NETLINK_HEADER_LEN + body.len()) as u32;
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut out = vec![0; NETLINK_HEADER_LEN + body.len()];
    header.emit(&mut out[..NETLINK_HEADER_LEN]);
    out[NETLINK_HEADER_LEN..].copy_from_slice(body);
    for _ in 0..DUMP_TRIES {
        let mut replies = Vec::new();
        if exchange(&out, dump, |frame| replies.push(frame.to_vec()))? {
            return Ok(replies);
        }
    }
    bail!("the kernel's dump was interrupted by changes {DUMP_TRIES} times in a row")
}

/// The length of a netlink message's header (struct nlmsghdr).
const NETLINK_HEADER_LEN: usize = 16;

enum Replies {
    Whole(Vec<RouteNetlinkMessage>),
    /// A dump with NLM_F_DUMP_INTR: the table changed while it was read.
    Interrupted,
}

fn parsed(message: &RouteNetlinkMessage, dump: bool) -> Result<Replies> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message.clone()));
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    let mut replies = Vec::new();
    // A message the crates cannot parse is skipped (see the module's note).
    let whole = exchange(&out, dump, |frame| {
        if let Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(m),
            ..
        }) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame)
        {
            replies.push(m);
        }
    })?;
    Ok(if whole {
        Replies::Whole(replies)
    } else {
        Replies::Interrupted
    })
}

/// Sends `request` (a whole netlink message) and hands `reply` each message the kernel
/// answers with other than its end of dump or acknowledgement: every message of a dump,
/// or the one answer. False when the kernel marked the dump interrupted.
fn exchange(request: &[u8], dump: bool, mut reply: impl FnMut(&[u8])) -> Result<bool> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(request, 0)?;

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
            match framed.message_type() {
                NLMSG_ERROR | NLMSG_DONE => {
                    // Both begin with the error code: 0, or a negative errno.
                    let code = framed
                        .payload()
                        .first_chunk::<4>()
                        .map_or(0, |b| i32::from_ne_bytes(*b));
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code).into());
                    }
                    return Ok(!(interrupted && dump));
                }
                NLMSG_NOOP => {}
                _ => {
                    reply(&buf[at..at + len]);
                    if !dump {
                        return Ok(true);
                    }
                }
            }
            // Messages are aligned to 4 bytes.
            at += (len + 3) & !3;
        }
    }
}
