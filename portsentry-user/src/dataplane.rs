//! The kernel half, seen from userspace: loading the XDP object, attaching it, and every
//! read and write of its maps. Nothing else in the daemon touches a BPF map.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::IpNet;
use portsentry_common::{
    Addr, Counter, PROGRAM_NAME,
    maps::{self, BanEntry, SETTING_IGNORE, SETTING_PREFIX_BANS, Settings, SourceStats},
};

use crate::{
    addr,
    config::{AttachMode, ports::PortSet},
    object,
};

/// Sizes of the maps whose size is a deployment choice.
#[derive(Clone, Debug)]
pub struct MapSizes {
    pub bans: u32,
    pub ban_nets: u32,
    pub ignore: u32,
    pub sources: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            bans: maps::BANS_MAX,
            ban_nets: maps::BAN_NETS_MAX,
            ignore: maps::IGNORE_MAX,
            sources: maps::SOURCES_MAX,
        }
    }
}

/// Counter totals summed over CPUs, indexed by [`Counter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Packets seen (the sum of the verdict reasons).
    pub fn packets(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_verdict())
            .map(|c| self.get(*c))
            .sum()
    }

    /// Packets dropped.
    pub fn dropped(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_drop())
            .map(|c| self.get(*c))
            .sum()
    }

    /// Counts that grew from `earlier` to `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for (i, v) in d.0.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        d
    }
}

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

/// The loaded XDP program and its maps.
pub struct Dataplane {
    /// The program (absent when only the pinned maps were opened).
    ebpf: Option<Ebpf>,
    maps: std::collections::HashMap<&'static str, Map>,
    pin_dir: Option<PathBuf>,
    settings: Settings,
    attachments: Vec<Attachment>,
    /// How many exact bans use each `PS_BAN_FILTER` bit (a bit is cleared at zero).
    filter_users: std::collections::HashMap<u32, u32>,
}

/// The pin path of the link that attaches the program to `interface`.
pub fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("link-{interface}"))
}

/// True when `pin_dir` holds portsentry's pinned maps.
pub fn is_pinned(pin_dir: &Path) -> bool {
    maps::ALL.iter().all(|n| pin_dir.join(n).exists())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The interface index a pinned XDP link is attached to: `Ok(0)` when something
/// detached it (`bpftool link detach`, the interface went away), an error when the pin
/// cannot be opened.
pub fn pinned_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C, align(8))]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    #[repr(C, align(8))]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// `struct bpf_link_info` up to the XDP member of its union.
    #[repr(C, align(8))]
    struct LinkInfo {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        xdp_ifindex: u32,
        _rest: [u32; 15],
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let get = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr prefix; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo {
        type_: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        xdp_ifindex: 0,
        _rest: [0; 15],
    };
    use std::os::fd::AsRawFd as _;
    let req = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: the info buffer is as large as info_len says.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &req as *const GetInfo,
            std::mem::size_of::<GetInfo>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.xdp_ifindex)
}

/// Mounts bpffs at /sys/fs/bpf when `pin_dir` lies under it and it is not mounted,
/// then creates `pin_dir`.
pub fn ensure_pin_dir(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).ok();
        // SAFETY: plain mount(2) with static NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({}); mount it \
                 with `mount -t bpf bpf /sys/fs/bpf`",
                std::io::Error::last_os_error()
            );
        }
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
    if !is_bpffs(pin_dir) {
        bail!(
            "the pin directory {} is not on a BPF file system (bpffs); set PIN_DIR to a \
             folder under /sys/fs/bpf",
            pin_dir.display()
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

impl Dataplane {
    /// Loads the embedded object and verifies the program. With `pin_dir`, every map is
    /// pinned there by name, and maps already pinned there are reused (adopted, with
    /// their bans, counts and pending events).
    pub fn load(sizes: &MapSizes, pin_dir: Option<PathBuf>) -> Result<Self> {
        let bytes = object::bytes()?;
        if let Some(dir) = &pin_dir {
            ensure_pin_dir(dir)?;
        }
        let pins: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(dir) => maps::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::BANS, sizes.bans)
            .map_max_entries(maps::BAN_NETS, sizes.ban_nets)
            .map_max_entries(maps::IGNORE, sizes.ignore)
            .map_max_entries(maps::SOURCES, sizes.sources);
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(bytes)
            .context("loading the XDP object into the kernel (are you root?)")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM_NAME}`"))?
            .try_into()?;
        program
            .load()
            .context("the kernel verifier rejected the XDP program")?;
        let mut taken = std::collections::HashMap::new();
        for name in maps::ALL {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map `{name}`"))?;
            taken.insert(name, map);
        }
        Self::with_maps(Some(ebpf), taken, pin_dir)
    }

    /// Opens the maps pinned in `pin_dir` without loading a program: for `status`,
    /// `ban` and `unban` while no daemon runs. Fails when nothing is pinned there.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        if !is_pinned(pin_dir) {
            bail!(
                "portsentry is not loaded: no pinned maps in {} (start it with `portsentry run`)",
                pin_dir.display()
            );
        }
        let mut taken = std::collections::HashMap::new();
        for name in maps::ALL {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            taken.insert(name, Map::from_map_data(data)?);
        }
        Self::with_maps(None, taken, Some(pin_dir.to_path_buf()))
    }

    fn with_maps(
        ebpf: Option<Ebpf>,
        maps: std::collections::HashMap<&'static str, Map>,
        pin_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let mut dp = Dataplane {
            ebpf,
            maps,
            pin_dir,
            settings: Settings::default(),
            attachments: Vec::new(),
            filter_users: Default::default(),
        };
        dp.settings = dp.read_settings()?;
        dp.rebuild_ban_filter()?;
        Ok(dp)
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .as_mut()
            .ok_or_else(|| anyhow!("no program loaded (maps opened read-only)"))?
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM_NAME}`"))?
            .try_into()?)
    }

    /// Attaches to `interface` and returns what was done. With a pin directory, the
    /// link is pinned (`link-IFACE`) so that it outlives this process; a link already
    /// pinned there is adopted: this program replaces the old one in it atomically, so
    /// there is no moment without a program on the interface.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        let pin = self.pin_dir.as_ref().map(|d| link_pin(d, interface));
        if let Some(pin) = &pin
            && pin.exists()
        {
            match self.adopt_link(pin) {
                Ok(()) => {
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
        Err(anyhow!(last_err.expect("at least one mode tried")))
            .with_context(|| format!("attaching XDP to interface `{interface}` ({mode:?} mode)"))
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

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
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
                |a| !matches!(pinned_link_ifindex(&link_pin(dir, &a.interface)), Ok(i) if i != 0),
            )
            .map(|a| a.interface.clone())
            .collect()
    }

    /// Attaches again to an interface whose link was lost (see [`Self::lost_attachments`]).
    pub fn reattach(&mut self, interface: &str, mode: AttachMode) -> Result<Attachment> {
        if let Some(dir) = &self.pin_dir {
            let _ = std::fs::remove_file(link_pin(dir, interface));
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

    /// The program's file descriptor (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        let program: &Xdp = self
            .ebpf
            .as_ref()
            .ok_or_else(|| anyhow!("no program loaded (maps opened read-only)"))?
            .program(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program `{PROGRAM_NAME}`"))?
            .try_into()?;
        Ok(program.fd()?.as_fd())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.maps
            .get_mut(name)
            .ok_or_else(|| anyhow!("the map `{name}` is not open here"))
    }

    fn map(&self, name: &str) -> Result<&Map> {
        self.maps
            .get(name)
            .ok_or_else(|| anyhow!("the map `{name}` is not open here"))
    }

    fn read_settings(&self) -> Result<Settings> {
        let a: Array<_, Settings> = Array::try_from(self.map(maps::SETTINGS)?)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes the runtime settings. The presence flags (`SETTING_PREFIX_BANS`,
    /// `SETTING_IGNORE`) are kept by this type itself and are not taken from `s`.
    pub fn write_settings(&mut self, s: Settings) -> Result<()> {
        let keep = self.settings.flags & (SETTING_PREFIX_BANS | SETTING_IGNORE);
        let s = Settings {
            flags: (s.flags & !(SETTING_PREFIX_BANS | SETTING_IGNORE)) | keep,
            ..s
        };
        self.store_settings(s)
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn store_settings(&mut self, s: Settings) -> Result<()> {
        let mut a: Array<_, Settings> = Array::try_from(self.map_mut(maps::SETTINGS)?)?;
        a.set(0, s, 0).context("writing PS_SETTINGS")?;
        self.settings = s;
        Ok(())
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let flags = if on {
            self.settings.flags | flag
        } else {
            self.settings.flags & !flag
        };
        if flags != self.settings.flags {
            self.store_settings(Settings {
                flags,
                ..self.settings
            })?;
        }
        Ok(())
    }

    /// Replaces the watched TCP and UDP ports.
    pub fn write_ports(&mut self, tcp: &PortSet, udp: &PortSet) -> Result<()> {
        let mut a: Array<_, u64> = Array::try_from(self.map_mut(maps::PORTS)?)?;
        for (base, set) in [(0, tcp), (maps::UDP_PORT_WORD_BASE, udp)] {
            for (i, w) in set.words().iter().enumerate() {
                a.set(base + i as u32, *w, 0)?;
            }
        }
        Ok(())
    }

    /// The watched TCP and UDP ports as the kernel has them.
    pub fn read_ports(&self) -> Result<(PortSet, PortSet)> {
        let a: Array<_, u64> = Array::try_from(self.map(maps::PORTS)?)?;
        let (mut tcp, mut udp) = (PortSet::new(), PortSet::new());
        for port in 0..=u16::MAX {
            let w = u32::from(port >> 6);
            let bit = 1u64 << (port & 63);
            if a.get(&w, 0)? & bit != 0 {
                tcp.insert(port);
            }
            if a.get(&(maps::UDP_PORT_WORD_BASE + w), 0)? & bit != 0 {
                udp.insert(port);
            }
        }
        Ok((tcp, udp))
    }

    /// Makes `PS_BAN_FILTER` exactly the filter of the bans in `PS_BANS` (at load, which
    /// also adopts the bans of pinned maps).
    fn rebuild_ban_filter(&mut self) -> Result<()> {
        let mut words = vec![0u64; maps::BAN_FILTER_WORDS as usize];
        let mut users = std::collections::HashMap::new();
        let m: HashMap<_, Addr, BanEntry> = HashMap::try_from(self.map(maps::BANS)?)?;
        let mut bans = Vec::new();
        for item in m.iter() {
            let (k, v) = item?;
            let bit = filter_bit(&k);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
            *users.entry(bit).or_insert(0) += 1;
            bans.push((k, v.expires_ns));
        }
        // The cache gets every ban whose slot is free or already its own (which also
        // refreshes an expiry a crash left stale).
        for (k, expires_ns) in bans {
            self.cache_put(&k, expires_ns)?;
        }
        let mut a: Array<_, u64> = Array::try_from(self.map_mut(maps::BAN_FILTER)?)?;
        for (i, w) in words.iter().enumerate() {
            if a.get(&(i as u32), 0)? != *w {
                a.set(i as u32, *w, 0)?;
            }
        }
        self.filter_users = users;
        Ok(())
    }

    /// Puts a ban into its `PS_BAN_CACHE` slot unless another ban holds it.
    fn cache_put(&mut self, key: &Addr, expires_ns: u64) -> Result<()> {
        let w: portsentry_common::packet::AddrWords = bytemuck::cast(*key);
        let idx = maps::ban_cache_slot(&w);
        let mut a: Array<_, maps::BanSlot> = Array::try_from(self.map_mut(maps::BAN_CACHE)?)?;
        let cur = a.get(&idx, 0)?;
        if cur.used == 0 || cur.addr == w {
            a.set(
                idx,
                maps::BanSlot {
                    addr: w,
                    expires_ns,
                    used: 1,
                },
                0,
            )
            .context("writing PS_BAN_CACHE")?;
        }
        Ok(())
    }

    /// Empties the `PS_BAN_CACHE` slot of a ban if the ban holds it.
    fn cache_drop(&mut self, key: &Addr) -> Result<()> {
        let w: portsentry_common::packet::AddrWords = bytemuck::cast(*key);
        let idx = maps::ban_cache_slot(&w);
        let mut a: Array<_, maps::BanSlot> = Array::try_from(self.map_mut(maps::BAN_CACHE)?)?;
        let cur = a.get(&idx, 0)?;
        if cur.used != 0 && cur.addr == w {
            a.set(idx, maps::BanSlot::default(), 0)
                .context("writing PS_BAN_CACHE")?;
        }
        Ok(())
    }

    fn set_filter_bit(&mut self, bit: u32, on: bool) -> Result<()> {
        let mut a: Array<_, u64> = Array::try_from(self.map_mut(maps::BAN_FILTER)?)?;
        let word = a.get(&(bit >> 6), 0)?;
        let mask = 1u64 << (bit & 63);
        a.set(bit >> 6, if on { word | mask } else { word & !mask }, 0)
            .context("writing PS_BAN_FILTER")?;
        Ok(())
    }

    /// Bans `net` (a host goes to the exact map, a wider prefix to the trie). Replaces an
    /// existing ban of the same network.
    pub fn insert_ban(&mut self, net: &IpNet, entry: &BanEntry) -> Result<()> {
        let (len, key) = addr::net_key(net);
        if addr::is_host(net) {
            // The filter bit goes first: a ban is never in the map without its bit.
            let bit = filter_bit(&key);
            let is_new = self.ban(net)?.is_none();
            if is_new {
                let users = self.filter_users.entry(bit).or_insert(0);
                *users += 1;
                if *users == 1 {
                    self.set_filter_bit(bit, true)?;
                }
            }
            let mut m: HashMap<_, Addr, BanEntry> = HashMap::try_from(self.map_mut(maps::BANS)?)?;
            if let Err(e) = m.insert(key, entry, 0) {
                if is_new {
                    self.release_filter_bit(bit)?;
                }
                return Err(e)
                    .with_context(|| format!("writing the ban of {net} (is PS_BANS full?)"));
            }
            // After the hash: the cache never holds a ban the hash lacks.
            self.cache_put(&key, entry.expires_ns)?;
        } else {
            let mut m: LpmTrie<_, Addr, BanEntry> =
                LpmTrie::try_from(self.map_mut(maps::BAN_NETS)?)?;
            m.insert(&Key::new(len, key), entry, 0)
                .with_context(|| format!("writing the ban of {net} (is PS_BAN_NETS full?)"))?;
            self.set_flag(SETTING_PREFIX_BANS, true)?;
        }
        Ok(())
    }

    /// Removes the ban of exactly `net`; false when there was none.
    pub fn remove_ban(&mut self, net: &IpNet) -> Result<bool> {
        let (len, key) = addr::net_key(net);
        let removed = if addr::is_host(net) {
            // Before the hash: the cache never holds a ban the hash lacks.
            self.cache_drop(&key)?;
            let mut m: HashMap<_, Addr, BanEntry> = HashMap::try_from(self.map_mut(maps::BANS)?)?;
            let removed = absent_is_false(m.remove(&key))?;
            if removed {
                self.release_filter_bit(filter_bit(&key))?;
            }
            removed
        } else {
            let mut m: LpmTrie<_, Addr, BanEntry> =
                LpmTrie::try_from(self.map_mut(maps::BAN_NETS)?)?;
            let removed = absent_is_false(m.remove(&Key::new(len, key)))?;
            let any_left = m.keys().next().is_some();
            self.set_flag(SETTING_PREFIX_BANS, any_left)?;
            removed
        };
        Ok(removed)
    }

    fn release_filter_bit(&mut self, bit: u32) -> Result<()> {
        if let Some(users) = self.filter_users.get_mut(&bit) {
            *users -= 1;
            if *users == 0 {
                self.filter_users.remove(&bit);
                self.set_filter_bit(bit, false)?;
            }
        }
        Ok(())
    }

    /// The ban of exactly `net`, if any.
    pub fn ban(&self, net: &IpNet) -> Result<Option<BanEntry>> {
        let (len, key) = addr::net_key(net);
        let r = if addr::is_host(net) {
            let m: HashMap<_, Addr, BanEntry> = HashMap::try_from(self.map(maps::BANS)?)?;
            m.get(&key, 0)
        } else {
            let m: LpmTrie<_, Addr, BanEntry> = LpmTrie::try_from(self.map(maps::BAN_NETS)?)?;
            m.get(&Key::new(len, key), 0)
        };
        absent_is_none(r)
    }

    /// Every ban in the kernel, hosts and prefixes.
    pub fn bans(&self) -> Result<Vec<(IpNet, BanEntry)>> {
        let mut out = Vec::new();
        let m: HashMap<_, Addr, BanEntry> = HashMap::try_from(self.map(maps::BANS)?)?;
        for item in m.iter() {
            let (k, v) = item?;
            out.push((addr::host_net(addr::from_key(&k)), v));
        }
        let t: LpmTrie<_, Addr, BanEntry> = LpmTrie::try_from(self.map(maps::BAN_NETS)?)?;
        for item in t.iter() {
            let (k, v) = item?;
            out.push((addr::net_from_key(k.prefix_len(), &k.data()), v));
        }
        Ok(out)
    }

    /// Makes the kernel's ignore list exactly `nets`: adds the new ones first, then
    /// removes the stale ones, so that no network in both the old and new list is ever
    /// unprotected.
    pub fn replace_ignore(&mut self, nets: &[IpNet]) -> Result<()> {
        let want: std::collections::HashSet<(u32, Addr)> = nets.iter().map(addr::net_key).collect();
        let mut t: LpmTrie<_, Addr, u32> = LpmTrie::try_from(self.map_mut(maps::IGNORE)?)?;
        for (len, key) in &want {
            t.insert(&Key::new(*len, *key), 1, 0)
                .context("writing PS_IGNORE (more ignore entries than its size?)")?;
        }
        let stale: Vec<Key<Addr>> = t
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            absent_is_false(t.remove(&k))?;
        }
        self.set_flag(SETTING_IGNORE, !want.is_empty())
    }

    /// One kernel counter summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(maps::COUNTERS)?)?;
        Ok(a.get(&(c as u32), 0)?.iter().sum())
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(maps::COUNTERS)?)?;
        let mut c = Counters::default();
        for (i, slot) in c.0.iter_mut().enumerate() {
            *slot = a.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(c)
    }

    /// What the kernel has recorded of one source.
    pub fn source(&self, ip: IpAddr) -> Result<Option<SourceStats>> {
        let m: HashMap<_, Addr, SourceStats> = HashMap::try_from(self.map(maps::SOURCES)?)?;
        absent_is_none(m.get(&addr::to_key(ip), 0))
    }

    /// How many sources are tracked (walks the keys: one syscall per entry).
    pub fn count_sources(&self) -> Result<u64> {
        let m: HashMap<_, Addr, SourceStats> = HashMap::try_from(self.map(maps::SOURCES)?)?;
        Ok(m.keys().count() as u64)
    }

    /// Kernel memory charged to each map (`memlock` in its fdinfo), in bytes.
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::AsRawFd as _;
        let mut out = Vec::new();
        for (name, map) in &self.maps {
            let fd = match map {
                Map::Array(m)
                | Map::PerCpuArray(m)
                | Map::HashMap(m)
                | Map::LruHashMap(m)
                | Map::LpmTrie(m)
                | Map::RingBuf(m) => m.fd().as_fd().as_raw_fd(),
                _ => continue,
            };
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let bytes = info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            out.push((*name, bytes));
        }
        out.sort();
        out
    }

    /// Every tracked source.
    pub fn sources(&self) -> Result<Vec<(IpAddr, SourceStats)>> {
        let m: HashMap<_, Addr, SourceStats> = HashMap::try_from(self.map(maps::SOURCES)?)?;
        let mut out = Vec::new();
        for item in m.iter() {
            let (k, v) = item?;
            out.push((addr::from_key(&k), v));
        }
        Ok(out)
    }

    /// Forgets a source's probe history (after it was banned or unbanned).
    pub fn forget_source(&mut self, ip: IpAddr) -> Result<()> {
        let mut m: HashMap<_, Addr, SourceStats> = HashMap::try_from(self.map_mut(maps::SOURCES)?)?;
        absent_is_false(m.remove(&addr::to_key(ip)))?;
        Ok(())
    }

    /// Takes the event ring buffer out (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .maps
            .remove(maps::EVENTS)
            .ok_or_else(|| anyhow!("the event ring buffer was already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }
}

fn filter_bit(key: &Addr) -> u32 {
    maps::ban_filter_bit(&bytemuck::cast::<Addr, portsentry_common::packet::AddrWords>(*key))
}

fn absent_is_none<V>(r: Result<V, MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn absent_is_false(r: Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
