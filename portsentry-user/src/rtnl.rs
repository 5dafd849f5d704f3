//! One request over rtnetlink and the kernel's replies (a dump's messages, or the one
//! answer), built and parsed by the rust-netlink crates.

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Room for one datagram: a dump's hold up to about 32 KiB.
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// Sends `message` (as a dump request when `dump`) and returns the kernel's replies: every
/// message of a dump, or the one answer.
pub(crate) fn request(
    message: RouteNetlinkMessage,
    dump: bool,
) -> Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut out = vec![0; request.buffer_len()];
    request.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut replies = Vec::new();
    let mut buf = vec![0_u8; RECV_BUF];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?.min(buf.len());
        let mut at = 0;
        while at < size {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..size])
                .context("reading the kernel's rtnetlink reply")?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(replies),
                NetlinkPayload::Error(e) if e.code.is_some() => bail!("{}", e.to_io()),
                NetlinkPayload::Error(_) => return Ok(replies),
                NetlinkPayload::InnerMessage(m) => {
                    replies.push(m);
                    if !dump {
                        return Ok(replies);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
