//! Which TCP ports may have a socket of this host (`PS_TCP_SOCKETS`), so that the
//! program skips the socket lookup, most of a probe's cost, for a port with none.
//!
//! The bitmap is only as good as the moment it was written, so two hooks in the kernel
//! (`ps_tcp_bind`, `ps_tcp_listen`) count every TCP bind and listen in
//! `PS_TCP_LISTENS`, and the program trusts the bitmap only while nothing was counted
//! since the daemon's last look at the listeners ([`Dataplane::write_tcp_sockets`], every
//! second with the services). The hooks are attached at load; with a pin directory
//! their links are pinned (`hook-NAME`), so they keep counting while no daemon runs and
//! the program keeps running. Without them (no cgroup v2 hierarchy mounted, say) the mark is never
//! written and every probe is looked up, as before.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps, links::FdLink},
};
use portsentry_common::{
    TCP_BIND4_PROGRAM, TCP_BIND6_PROGRAM, TCP_LISTEN_PROGRAM,
    maps::{TCP_BOUND_WORD_BASE, TCP_LISTENS_MARK, TCP_LISTENS_SEEN},
};

use super::{Dataplane, program};
use crate::{config::ports::PortSet, paths};

/// The attached hooks: held by the dataplane when nothing pins them (they detach with
/// it), or pinned and held by nobody.
pub(super) struct Hooks {
    _links: Vec<FdLink>,
    /// The local ports of every TCP socket when the hooks were attached: sockets bound
    /// before the hooks saw them, which the look at the listeners would miss once they
    /// are connected rather than listening.
    at_attach: PortSet,
}

/// Loads and attaches the hooks from the loaded object `ebpf` (whose maps the XDP program
/// shares). With `pin_dir`, their links are pinned there, replacing the links an
/// earlier start pinned (the new hooks count before the old ones go: no bind is missed).
pub(super) fn attach_hooks(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Hooks> {
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening the root cgroup {}", root.display()))?;
    // A cgroup link always runs beside the cgroup's other programs; its flags must be 0
    // (`Single`): the kernel refuses a multi-program flag on a link.
    let mode = CgroupAttachMode::Single;
    let mut links = Vec::with_capacity(3);
    for name in [TCP_BIND4_PROGRAM, TCP_BIND6_PROGRAM] {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.load()
            .with_context(|| format!("loading the hook `{name}`"))?;
        let id = p
            .attach(&cgroup, mode)
            .with_context(|| format!("attaching the hook `{name}` to {}", root.display()))?;
        links.push((name, FdLink::try_from(p.take_link(id)?)?));
    }
    let p: &mut SockOps = program(ebpf, TCP_LISTEN_PROGRAM)?;
    p.load()
        .with_context(|| format!("loading the hook `{TCP_LISTEN_PROGRAM}`"))?;
    let id = p.attach(&cgroup, mode).with_context(|| {
        format!(
            "attaching the hook `{TCP_LISTEN_PROGRAM}` to {}",
            root.display()
        )
    })?;
    links.push((TCP_LISTEN_PROGRAM, FdLink::try_from(p.take_link(id)?)?));
    // Read once the hooks count: a socket bound from here on is theirs.
    let at_attach = crate::config::services::tcp_ports_in_use()?;
    let Some(dir) = pin_dir else {
        return Ok(Hooks {
            _links: links.into_iter().map(|(_, l)| l).collect(),
            at_attach,
        });
    };
    for (name, link) in links {
        let pin = paths::hook_pin(dir, name);
        // Replacing the pin releases the earlier start's link (and its hook).
        let _ = std::fs::remove_file(&pin);
        link.pin(&pin)
            .with_context(|| format!("pinning the hook's link at {}", pin.display()))?;
    }
    Ok(Hooks {
        _links: Vec::new(),
        at_attach,
    })
}

/// Where the cgroup v2 hierarchy's root is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` beside cgroup v1): the hooks attached there see every socket.
fn cgroup2_root() -> Result<std::path::PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER"
            let (left, right) = line.split_once(" - ")?;
            let mut f = left.split(' ');
            let (root, point) = (f.nth(3)?, f.next()?);
            (right.split(' ').next()? == "cgroup2" && root == "/").then(|| point.into())
        })
        .ok_or_else(|| {
            anyhow!("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
        })
}

impl Dataplane {
    /// The count of TCP binds and listens the hooks have seen, to read before a look at
    /// the listeners; `None` when the hooks are not attached (the bitmap is never
    /// trusted then).
    pub fn tcp_listens_seen(&self) -> Option<u64> {
        self.tcp_hooks.as_ref()?;
        self.maps
            .tcp_listens
            .as_ref()?
            .get(&TCP_LISTENS_SEEN, 0)
            .ok()
    }

    /// Writes the daemon's half of `PS_TCP_SOCKETS`: the ports with a listening socket
    /// (`listening`, read after the hooks' count was `seen`), and those of every TCP
    /// socket when the hooks were attached; then marks the bitmap current for `seen`. A
    /// bind or listen counted since `seen` leaves it untrusted until the next look.
    pub fn write_tcp_sockets(&mut self, listening: &PortSet, seen: u64) -> Result<()> {
        let (Some(hooks), Some(map), Some(listens)) = (
            &self.tcp_hooks,
            self.maps.tcp_sockets.as_mut(),
            self.maps.tcp_listens.as_mut(),
        ) else {
            return Ok(());
        };
        let mut want = listening.clone();
        for port in hooks.at_attach.iter() {
            want.insert(port);
        }
        let current = match self.tcp_words.take() {
            Some(w) => w,
            None => (0..TCP_BOUND_WORD_BASE)
                .map(|i| map.get(&i, 0))
                .collect::<Result<Vec<u64>, _>>()?,
        };
        for (i, (now, w)) in current.iter().zip(want.words()).enumerate() {
            if now != w {
                map.set(i as u32, *w, 0).context("writing PS_TCP_SOCKETS")?;
            }
        }
        self.tcp_words = Some(want.words().to_vec());
        listens
            .set(TCP_LISTENS_MARK, seen.wrapping_add(1), 0)
            .context("writing PS_TCP_LISTENS")?;
        Ok(())
    }

    /// Makes the program look every TCP probe up (no hooks keep the bitmap honest).
    pub(super) fn untrust_tcp_sockets(&mut self) -> Result<()> {
        if let Some(listens) = self.maps.tcp_listens.as_mut() {
            listens
                .set(TCP_LISTENS_MARK, 0, 0)
                .context("writing PS_TCP_LISTENS")?;
        }
        Ok(())
    }

    /// True when the program trusts `PS_TCP_SOCKETS` now (no TCP bind or listen since the
    /// daemon's last look).
    pub fn tcp_sockets_current(&self) -> Result<bool> {
        let Some(listens) = &self.maps.tcp_listens else {
            return Ok(false);
        };
        let seen = listens.get(&TCP_LISTENS_SEEN, 0)?;
        let mark = listens.get(&TCP_LISTENS_MARK, 0)?;
        Ok(mark == seen.wrapping_add(1))
    }

    /// True when `port`'s bit is set in the hooks' half of `PS_TCP_SOCKETS` (a bind asked
    /// for it since the map was made).
    pub fn tcp_port_bound(&self, port: u16) -> Result<bool> {
        let Some(map) = &self.maps.tcp_sockets else {
            return Ok(false);
        };
        let w = map.get(&(TCP_BOUND_WORD_BASE + u32::from(port >> 6)), 0)?;
        Ok(w & 1 << (port & 63) != 0)
    }
}
