//! Attaching the program to interfaces: links pinned so that they outlive the daemon,
//! adopted (the program replaced in them atomically) by the next daemon, and put back
//! when something else detached them.

use std::{os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkLayerType, LinkMessage, LinkXdp, XdpAttached},
};
use portsentry_common::{PROBE_PROGRAM, PROGRAM_NAME};

use super::{
    Dataplane, Program,
    sys::{detach_pinned_link, pinned_link_ifindex},
};
use crate::{config::AttachMode, paths, rtnl};

/// One attachment of the program made or adopted by this process.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub interface: String,
    /// The mode the kernel accepted; `None` for a pinned link that was adopted (its
    /// mode is the one it was first attached with).
    pub mode: Option<XdpMode>,
    /// The link is pinned: it stays attached when this process exits.
    pub pinned: bool,
}

/// Fails unless `interface`'s frames start with an Ethernet header, as the program reads
/// them: a device of another link type (WireGuard, tun, IPIP, GRE, SIT, PPP: its packets
/// start at the IP header) would be watched in name only, no scan seen and no ban
/// enforced. An interface that does not exist passes here (the attach names it).
fn require_ethernet(interface: &str) -> Result<()> {
    let Some(link) = link_of(interface)? else {
        return Ok(());
    };
    let kind = Some(link.header.link_layer_type);
    match kind {
        Some(LinkLayerType::Ether | LinkLayerType::Loopback) | None => Ok(()),
        Some(other) => bail!(
            "{interface} is not an Ethernet device (link type {other}): its packets carry \
             no Ethernet header (a tunnel, WireGuard, tun or PPP device), and portsentry \
             reads Ethernet frames, so it would see no scan and enforce no ban there; remove \
             it from INTERFACES (or -i): traffic that reaches this host only through such a \
             device cannot be watched (on the Ethernet interface below it, it is \
             encapsulated or encrypted)"
        ),
    }
}

/// What the kernel says of `interface` (RTM_GETLINK); `None` when there is no such
/// interface.
fn link_of(interface: &str) -> Result<Option<LinkMessage>> {
    let Ok(name) = std::ffi::CString::new(interface) else {
        return Ok(None);
    };
    // SAFETY: a NUL-terminated name; the call reads it only.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Ok(None);
    }
    let mut link = LinkMessage::default();
    link.header.index = index;
    Ok(rtnl::request(RouteNetlinkMessage::GetLink(link), false)
        .with_context(|| format!("reading the link {interface}"))?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        }))
}

/// The mode a program is attached to `interface` in (`IFLA_XDP_ATTACHED`): `None` when
/// none is, or it cannot be read.
pub fn attached_mode(interface: &str) -> Option<XdpMode> {
    link_of(interface)
        .ok()??
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => xdp.into_iter().find_map(|x| match x {
                LinkXdp::Attached(XdpAttached::Driver) => Some(XdpMode::Driver),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(XdpMode::Skb),
                _ => None,
            }),
            _ => None,
        })
}

impl Dataplane {
    /// Waits until the kernel has verified the program ([`Dataplane::load_verifying`];
    /// the first attach waits too). An error is its rejection.
    pub fn wait_verified(&mut self) -> Result<()> {
        self.program()?;
        // The program can run from here on (BPF_PROG_TEST_RUN), and write the filter
        // and the cache.
        self.blank = Default::default();
        Ok(())
    }

    /// The loaded program, once the kernel verified it.
    fn program(&mut self) -> Result<&mut Xdp> {
        if let Program::Verifying(_) = &self.ebpf {
            let Program::Verifying(thread) = std::mem::replace(&mut self.ebpf, Program::None)
            else {
                unreachable!("matched above")
            };
            let (ebpf, took) = thread
                .join()
                .map_err(|_| anyhow!("the verifier's thread panicked"))??;
            self.ebpf = Program::Loaded(ebpf);
            self.verified_in = Some(took);
        }
        let ebpf = match &mut self.ebpf {
            Program::Pinned(xdp) => return Ok(xdp),
            Program::Loaded(ebpf) => ebpf,
            _ => bail!("no program loaded (maps opened read-only)"),
        };
        Ok(ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM_NAME}`"))?
            .try_into()?)
    }

    /// Attaches to `interface` and returns what was done. With a pin directory, the
    /// link is pinned (`link-IFACE`) so that it outlives this process; a link already
    /// pinned there is adopted: this program replaces the old one in it atomically, so
    /// there is no moment without a program on the interface. A pinned link of another
    /// mode than `mode` names (XDP_MODE changed since it was made) is detached and the
    /// program attached anew in that mode, or, should the kernel refuse it, in the old
    /// one again.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        require_ethernet(interface)?;
        // The program verified first: a rejection must not be taken for a dead link
        // below, whose pin would go, and the old program with it.
        self.program()?;
        // From here on the program writes the filter and the cache too.
        self.blank = Default::default();
        let pin = self.pin_dir.as_ref().map(|d| paths::link_pin(d, interface));
        let wanted = match mode {
            AttachMode::Native => Some(XdpMode::Driver),
            AttachMode::Skb => Some(XdpMode::Skb),
            AttachMode::Auto => None,
        };
        // The mode of the pinned link, detached here as XDP_MODE names another.
        let mut detached = None;
        if let Some(pin) = &pin
            && pin.exists()
            && let Some(wanted) = wanted
            && let Some(held) = attached_mode(interface).filter(|held| *held != wanted)
        {
            match detach_pinned_link(pin) {
                Ok(()) => {
                    log::warn!(
                        "{interface}: the pinned link attaches it in {held:?} mode and XDP_MODE \
                         names {wanted:?}: attaching anew (no program on {interface} until \
                         then)"
                    );
                    detached = Some(held);
                }
                Err(e) => log::warn!(
                    "{interface}: the pinned link attaches it in {held:?} mode and XDP_MODE \
                     names {wanted:?}, but it could not be detached ({e}): it stays in \
                     {held:?} mode; `portsentry unload` then a start changes it"
                ),
            }
        }
        if let Some(pin) = &pin
            && pin.exists()
        {
            match self.adopt_link(pin) {
                Ok(()) => {
                    self.pin_own_progs()?;
                    let a = Attachment {
                        interface: interface.to_owned(),
                        mode: None,
                        pinned: true,
                    };
                    self.attachments.push(a.clone());
                    return Ok(a);
                }
                Err(e) => {
                    // The link is dead (its interface went away): forget it.
                    log::warn!("dropping the stale link {}: {e:#}", pin.display());
                    std::fs::remove_file(pin).ok();
                }
            }
        }
        let tries: &[XdpMode] = match mode {
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Skb => &[XdpMode::Skb],
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        };
        let program = self.program()?;
        let mut last_err = None;
        for m in tries {
            match program.attach(interface, *m) {
                Ok(link_id) => {
                    let mut pinned = false;
                    if let Some(pin) = &pin {
                        let link = program.take_link(link_id)?;
                        let fd_link = FdLink::try_from(link).map_err(|e| {
                            anyhow!("the kernel attached {interface} without a BPF link: {e}")
                        })?;
                        fd_link
                            .pin(pin)
                            .with_context(|| format!("pinning the link at {}", pin.display()))?;
                        pinned = true;
                    }
                    self.pin_own_progs()?;
                    let a = Attachment {
                        interface: interface.to_owned(),
                        mode: Some(*m),
                        pinned,
                    };
                    self.attachments.push(a.clone());
                    return Ok(a);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let err = anyhow!(last_err.expect("at least one mode tried")).context(format!(
            "attaching XDP to interface `{interface}` ({mode:?} mode)"
        ));
        if let Some(old) = detached {
            log::warn!("{err:#}: attaching it in {old:?} mode again, as before");
            let old = match old {
                XdpMode::Driver => AttachMode::Native,
                _ => AttachMode::Skb,
            };
            return self.attach(interface, old);
        }
        Err(err)
    }

    fn adopt_link(&mut self, pin: &Path) -> Result<()> {
        let pinned = PinnedLink::from_pin(pin)?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link)?;
        let program = self.program()?;
        let id = program.attach_to_link(link)?;
        // The pin keeps the link; this process needs no handle on it.
        let _ = program.take_link(id)?;
        Ok(())
    }

    /// Interfaces whose pinned link no longer holds the program (detached by someone
    /// else, or the interface was deleted).
    pub fn lost_attachments(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else {
            return Vec::new();
        };
        self.attachments
            .iter()
            .filter(|a| a.pinned)
            .filter(
                |a| !matches!(pinned_link_ifindex(&paths::link_pin(dir, &a.interface)), Ok(i) if i != 0),
            )
            .map(|a| a.interface.clone())
            .collect()
    }

    /// Attaches again to an interface whose link was lost (see [`Self::lost_attachments`]).
    pub fn reattach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        if let Some(dir) = &self.pin_dir {
            let _ = std::fs::remove_file(paths::link_pin(dir, interface));
        }
        self.attachments.retain(|a| a.interface != interface);
        self.attach(interface, mode).inspect_err(|_| {
            // Keep it on the list, so that the next check tries again.
            self.attachments.push(Attachment {
                interface: interface.to_owned(),
                mode: None,
                pinned: true,
            });
        })
    }

    /// The loaded program, to read.
    fn program_ref(&self) -> Result<&Xdp> {
        let ebpf = match &self.ebpf {
            Program::Pinned(xdp) => return Ok(xdp),
            Program::Loaded(ebpf) => ebpf,
            _ => bail!("no program loaded (maps opened read-only, or not attached yet)"),
        };
        Ok(ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM_NAME}`"))?
            .try_into()?)
    }

    /// The program's file descriptor (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        Ok(self.program_ref()?.fd()?.as_fd())
    }

    /// How many instructions the verifier processed to accept each of the program's
    /// halves, the first and the probe stage (its limit is 1,000,000 for each): the
    /// headroom every change to the program spends.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        let Program::Loaded(ebpf) = &self.ebpf else {
            bail!("no program loaded by this process");
        };
        [PROGRAM_NAME, PROBE_PROGRAM]
            .into_iter()
            .map(|name| {
                let p = ebpf
                    .program(name)
                    .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?;
                let n = p
                    .info()?
                    .verified_instruction_count()
                    .ok_or_else(|| anyhow!("the kernel does not report verified instructions"))?;
                Ok((name, n))
            })
            .collect()
    }
}
