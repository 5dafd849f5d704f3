//! The kernel half, seen from userspace: loading the XDP object ([`object`]), attaching
//! it ([`attach`]), and every read and write of its maps ([`bans`], [`maps`]) through
//! typed handles opened once. Nothing else in the daemon touches a BPF map.

pub mod addr;
mod attach;
mod ban_cache;
mod ban_filter;
mod ban_tags;
mod bans;
pub mod configure;
mod filter_users;
mod mapped;
mod maps;
mod net_filter;
mod net_hash;
pub mod object;
mod progs;
mod resize;
mod sources;
mod sys;
mod tcp_sockets;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, ProgramArray},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;
use portsentry_common::{
    PROBE_PROGRAM, PROGRAM_NAME,
    maps::{self as names, Settings},
    sources::source_entries,
};
use portsentry_common::{
    ban_tags::{ban_tag_buckets, ban_tag_shift_of},
    maps::{ban_cache_sets, with_ban_cache_sets},
};

use crate::paths;

pub use attach::{Attachment, attached_mode};
pub use bans::MapFull;
pub use maps::Counters;
pub use resize::MapTooSmall;
pub use sys::{MAP_WRITERS_MAX, ensure_pin_dir, pinned_link_ifindex};

/// Sizes of the maps whose size is a deployment choice.
#[derive(Clone, Debug)]
pub struct MapSizes {
    pub bans: u32,
    pub ban_nets: u32,
    pub ignore: u32,
    /// MAX_TRACKED_SOURCES (`PS_SOURCES` holds sets of three: rounded up to a whole set).
    pub sources: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            bans: names::BANS_MAX,
            ban_nets: names::BAN_NETS_MAX,
            ignore: names::IGNORE_MAX,
            sources: names::SOURCES_MAX,
        }
    }
}

/// The loaded XDP program and its maps.
pub struct Dataplane {
    /// The program (absent when only the pinned maps were opened).
    ebpf: Program,
    maps: maps::Maps,
    pin_dir: Option<PathBuf>,
    settings: Settings,
    attachments: Vec<Attachment>,
    /// How many exact bans use each `PS_BAN_FILTER` bit (a bit is cleared at zero).
    filter_users: filter_users::FilterUsers,
    /// How many range bans use each `PS_NET_FILTER` bit, and how many are too wide for it.
    net_filter: net_filter::NetFilterUsers,
    /// The ranges and lengths of the hash of lengths.
    net_hash: net_hash::NetHash,
    /// The exact bans read at load, until [`Dataplane::take_bans_at_load`] takes them
    /// (dropped at the first change of a ban).
    bans_at_load: Option<Vec<(portsentry_common::Addr, portsentry_common::maps::BanEntry)>>,
    /// The program's count of lost events, read at load before its bans were.
    events_lost_at_load: u64,
    /// Pinned maps replaced by maps of the configured sizes at this load, and those an
    /// earlier start replaced and did not release ([`resize::orphaned`]), held until
    /// [`Dataplane::release_replaced_maps`].
    resized: Vec<resize::Resized>,
    /// Pins of replaced maps that could not be read ([`resize::orphaned`]), removed at
    /// the release all the same.
    unusable_replaced: Vec<PathBuf>,
    /// The pinned `PS_PROGS` of the program this load replaces (`progs`).
    replaced_progs: Option<progs::ReplacedProgs>,
    /// What `PS_IGN_FILTER` holds, once read or written.
    ignore_words: Option<Vec<u64>>,
    /// What `PS_LOCAL_FILTER` holds, once written.
    local_words: Option<Vec<u64>>,
    /// What `PS_ACK_PORTS` holds, once read or written.
    ack_words: Option<Vec<u64>>,
    /// The hooks that make `PS_TCP_SOCKETS` trustworthy, when attached at this load.
    tcp_hooks: Option<tcp_sockets::Hooks>,
    /// What the daemon's half of `PS_TCP_SOCKETS` holds, once read or written.
    tcp_words: Option<Vec<u64>>,
    /// How long the kernel took to verify the programs, once this load verified them on
    /// the verifier's thread and the first attach waited for it.
    verified_in: Option<std::time::Duration>,
    /// `PS_BAN_FILTER` as created by this load and not written since.
    blank: Blank,
}

/// Arrays this load created that nothing has written yet: every word zero, so they are
/// not read back (2 MiB) before they are first written. Only while the program is
/// being verified ([`Dataplane::load_verifying`]) and until the first attach: then only
/// this process writes them (the program cannot run before it is loaded and attached,
/// and a pinned program is reused only over pinned maps).
#[derive(Clone, Copy, Debug, Default)]
struct Blank {
    filter: bool,
    /// No program reads or writes the maps yet (this load created them, and the
    /// program is being verified): the ban maps may be written in any order.
    unused: bool,
}

/// The loaded object's program.
enum Program {
    /// Only the pinned maps were opened.
    None,
    /// The kernel is verifying it ([`Dataplane::load_verifying`]).
    Verifying(std::thread::JoinHandle<Result<(Ebpf, std::time::Duration)>>),
    Loaded(Ebpf),
    /// The same build's program, opened from its pin: loaded and verified by an earlier
    /// start, on the maps pinned now.
    Pinned(Box<Xdp>),
}

/// The program pinned in `pin_dir` by an earlier start of the build `build`, if it
/// is there and every map it uses is a map pinned there now (a map created or replaced
/// since would not be the program's: it is loaded again).
fn pinned_program(pin_dir: &Path, build: u64) -> Result<Option<Xdp>> {
    let path = paths::program_pin(pin_dir, build);
    if !path.exists() {
        return Ok(None);
    }
    let program = Xdp::from_pin(&path, XdpAttachType::Interface)
        .with_context(|| format!("opening the pinned program {}", path.display()))?;
    let Some(used) = program
        .info()
        .and_then(|i| i.map_ids())
        .with_context(|| format!("reading the maps of the pinned program {}", path.display()))?
    else {
        return Ok(None);
    };
    let mut pinned = Vec::with_capacity(names::ALL.len());
    for name in names::ALL {
        let map = pin_dir.join(name);
        if let Ok(data) = MapData::from_pin(&map) {
            pinned.push(data.info()?.id());
        }
    }
    Ok(used.iter().all(|id| pinned.contains(id)).then_some(program))
}

/// Pins the program just loaded as the build `build`'s, replacing the program pins of
/// other builds (the links that run them keep them until they are replaced). A pin
/// that fails only costs the next start a verification: it is logged.
fn pin_program(program: &mut Xdp, pin_dir: &Path, build: u64) {
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            if paths::is_program_pin(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let path = paths::program_pin(pin_dir, build);
    if let Err(e) = program.pin(&path) {
        log::warn!("pinning the program at {}: {e}", path.display());
    }
}

/// The object's program `name`, typed.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no program `{name}`"))?
        .try_into()?)
}

/// Loads the XDP program and its probe stage (`ps_probe`), the kernel verifying each on
/// a thread of its own (the stage's verification is a sixth of the whole, and a start
/// after a reboot waits for the verifier), then puts the stage in `PS_PROGS`, where the
/// first program tail-calls it (an object from before the stage has neither).
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let has_stage = ebpf.program(PROBE_PROGRAM).is_some() || ebpf.map(names::PROGS).is_some();
    let (mut first, mut stage) = (None, None);
    for (name, prog) in ebpf.programs_mut() {
        match name {
            PROGRAM_NAME => first = Some(prog),
            PROBE_PROGRAM => stage = Some(prog),
            _ => {}
        }
    }
    let first: &mut Xdp = first
        .ok_or_else(|| anyhow!("the XDP object has no program `{PROGRAM_NAME}`"))?
        .try_into()?;
    let stage: Option<&mut Xdp> = match (has_stage, stage) {
        (false, _) => None,
        (true, Some(stage)) => Some(stage.try_into()?),
        (true, None) => bail!("the XDP object has no program `{PROBE_PROGRAM}`"),
    };
    std::thread::scope(|s| -> Result<()> {
        let stage = stage.map(|stage| {
            s.spawn(move || {
                stage
                    .load()
                    .context("the kernel verifier rejected the probe stage")
            })
        });
        first
            .load()
            .context("the kernel verifier rejected the XDP program")?;
        if let Some(stage) = stage {
            stage.join().expect("the probe stage's verifier thread")?;
        }
        Ok(())
    })?;
    if !has_stage {
        // An earlier build's object, in one piece (the bench compares one).
        return Ok(());
    }
    let stage: &mut Xdp = program(ebpf, PROBE_PROGRAM)?;
    let fd = stage.fd()?.try_clone()?;
    let map = ebpf
        .map_mut(names::PROGS)
        .ok_or_else(|| anyhow!("the XDP object has no map `{}`", names::PROGS))?;
    ProgramArray::try_from(map)?
        .set(names::PROBE_STAGE, &fd, 0)
        .context("putting the probe stage in PS_PROGS")?;
    Ok(())
}

/// Maps a pin directory of an earlier release lacks: the next `run` creates them.
const ADDED_MAPS: [&str; 12] = [
    names::BAN_TAGS,
    names::BAN_NET_HASH,
    names::BAN_NET_LENS,
    names::ACK_PORTS,
    names::PROTOCOLS,
    names::NET_FILTER,
    names::LOCAL_FILTER,
    names::TCP_SOCKETS,
    names::TCP_LISTENS,
    names::PROGS,
    names::PROBE,
    names::CLOCK,
];

/// `PS_SOURCES`'s entries for MAX_TRACKED_SOURCES `sources` in the object `bytes`: the
/// table's header and sets, or, in an earlier build's object (the bench's baselines),
/// an LRU hash of `sources` entries.
fn sources_entries(bytes: &[u8], sources: u32) -> u32 {
    let own = object::bytes().is_ok_and(|own| std::ptr::eq(own.as_ptr(), bytes.as_ptr()));
    let lru = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;
    if !own
        && aya_obj::Object::parse(bytes)
            .ok()
            .and_then(|o| o.maps.get(names::SOURCES).map(|m| m.map_type()))
            == Some(lru)
    {
        return sources;
    }
    source_entries(sources)
}

/// What a load knows of what the maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contents {
    /// Pinned maps opened to read only (`status`): nothing is rebuilt or written.
    ReadOnly,
    /// Maps an earlier start pinned (or copied from maps replaced by a resize): the ban
    /// filters and the cache are rebuilt from the bans read back.
    Kept,
    /// Every map created by this load: empty, nothing to read back.
    Created,
}

/// True when `pin_dir` holds portsentry's pinned maps (those of an earlier release
/// too).
pub fn is_pinned(pin_dir: &Path) -> bool {
    names::ALL
        .iter()
        .filter(|n| !ADDED_MAPS.contains(n))
        .all(|n| pin_dir.join(n).exists())
}

/// Whether a start stopped after it replaced the ban maps pinned in `pin_dir`, before
/// it carried their late bans over ([`resize::orphaned`]).
pub fn replaced_maps_wait(pin_dir: &Path) -> bool {
    !resize::replaced_pins(pin_dir).is_empty()
}

impl Dataplane {
    /// Loads the embedded object and verifies the program. With `pin_dir`, every map is
    /// pinned there by name, and maps already pinned there are reused (adopted, with
    /// their bans, counts and pending events).
    pub fn load(sizes: &MapSizes, pin_dir: Option<PathBuf>) -> Result<Self> {
        Self::load_object(object::bytes()?, sizes, pin_dir)
    }

    /// Like [`Dataplane::load`], but the kernel verifies the program on a thread of its
    /// own (a second or more for this program) while the caller fills the maps: the
    /// first [`Dataplane::attach`] waits for it and reports a rejection.
    pub fn load_verifying(sizes: &MapSizes, pin_dir: Option<PathBuf>) -> Result<Self> {
        Self::load_with(object::bytes()?, sizes, pin_dir, true)
    }

    /// Like [`Dataplane::load`], with another build's object (the bench compares two).
    pub fn load_object(bytes: &[u8], sizes: &MapSizes, pin_dir: Option<PathBuf>) -> Result<Self> {
        Self::load_with(bytes, sizes, pin_dir, false)
    }

    fn load_with(
        bytes: &[u8],
        sizes: &MapSizes,
        pin_dir: Option<PathBuf>,
        background: bool,
    ) -> Result<Self> {
        if let Some(dir) = &pin_dir {
            ensure_pin_dir(dir)?;
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::BANS, sizes.bans)
            .map_max_entries(names::BAN_NETS, sizes.ban_nets)
            .map_max_entries(names::BAN_NET_HASH, sizes.ban_nets)
            .map_max_entries(names::BAN_CACHE, ban_cache_sets(sizes.bans))
            .map_max_entries(names::BAN_TAGS, ban_tag_buckets(sizes.bans))
            .map_max_entries(names::IGNORE, sizes.ignore)
            .map_max_entries(names::SOURCES, sources_entries(bytes, sizes.sources));
        // Pinned maps of another size than configured are replaced (`resize`).
        let resized = match &pin_dir {
            Some(dir) => {
                resize::remove_temporary_pins(dir);
                resize::pinned_to_resize(dir, sizes)?
            }
            None => Vec::new(),
        };
        // Nothing pinned (a reboot empties bpffs; the bench pins nothing): every map is
        // created by this load, so none is read back. Reading an empty `PS_BANS` still
        // walks all its buckets (a quarter of a second at the default size here).
        let contents = match &pin_dir {
            Some(dir) if names::ALL.iter().any(|n| dir.join(n).exists()) => Contents::Kept,
            _ => Contents::Created,
        };
        let build = object::build_id(bytes);
        let reused = match &pin_dir {
            // A pin that cannot be used only costs this start a verification; so does a
            // `PS_PROGS` without the probe stage.
            Some(dir) if resized.is_empty() && progs::pinned_stage(dir) => {
                pinned_program(dir, build).unwrap_or_else(|e| {
                    log::warn!("{e:#}: loading the program again");
                    None
                })
            }
            _ => None,
        };
        // A program loaded again has a `PS_PROGS` of its own (`progs`).
        let replaced_progs = match &pin_dir {
            Some(dir) if reused.is_none() => progs::pinned(dir)?,
            _ => None,
        };
        if let Some(dir) = &pin_dir {
            for name in names::ALL {
                let own = name == names::PROGS && replaced_progs.is_some();
                if !own && !resized.iter().any(|r| r.name == name) {
                    loader.map_pin_path(name, dir.join(name));
                }
            }
        }
        // Creates (or opens) the maps and writes their fds into the program's
        // instructions; the program itself is loaded below.
        let mut ebpf = loader
            .load(bytes)
            .context("loading the XDP object into the kernel (are you root?)")?;
        // Every map the object has; `maps::Maps::new` says which it cannot do without.
        // The fds stay open in them while the kernel verifies the program.
        // `PS_PROGS` stays with the object: it is filled once the probe stage is loaded.
        let taken: std::collections::HashMap<&'static str, Map> = names::ALL
            .into_iter()
            .filter(|name| *name != names::PROGS)
            .filter_map(|name| Some((name, ebpf.take_map(name)?)))
            .collect();
        let mut resized = resized;
        let mut unusable_replaced = Vec::new();
        if let Some(dir) = &pin_dir {
            // Found before this load pins the maps it replaces.
            let (orphans, unusable) = resize::orphaned(dir);
            Self::take_over_resized(dir, &resized, &taken)?;
            resized.extend(orphans);
            unusable_replaced = unusable;
        }
        let hooks = tcp_sockets::attach_hooks(&mut ebpf, pin_dir.as_deref())
            .inspect_err(|e| log::warn!("{e:#}: every TCP probe is looked up"))
            .ok();
        let pin = pin_dir.as_ref().map(|dir| (dir.clone(), build));
        let verify = move || -> Result<(Ebpf, std::time::Duration)> {
            let t = std::time::Instant::now();
            load_programs(&mut ebpf)?;
            let took = t.elapsed();
            // Pinned once complete: a start that reuses the pin finds the stage in place.
            if let Some((dir, build)) = pin {
                pin_program(program(&mut ebpf, PROGRAM_NAME)?, &dir, build);
            }
            Ok((ebpf, took))
        };
        let program = if let Some(xdp) = reused {
            Program::Pinned(Box::new(xdp))
        } else if background {
            Program::Verifying(
                std::thread::Builder::new()
                    .name("verifier".into())
                    .spawn(verify)
                    .context("starting the verifier's thread")?,
            )
        } else {
            Program::Loaded(verify()?.0)
        };
        let mut dp = Self::with_maps(program, taken, pin_dir, contents, resized)?;
        dp.unusable_replaced = unusable_replaced;
        dp.replaced_progs = replaced_progs.map(|held| progs::ReplacedProgs {
            _held: held,
            pinned_own: false,
        });
        if hooks.is_none() {
            // Pins kept from an earlier start may hold a mark that no hook keeps honest.
            dp.untrust_tcp_sockets()?;
        }
        dp.tcp_hooks = hooks;
        Ok(dp)
    }

    /// How long the kernel took to verify the programs ([`Dataplane::load_verifying`]),
    /// once the first attach has waited for them.
    pub fn verified_in(&self) -> Option<std::time::Duration> {
        self.verified_in
    }

    /// True when the program is the one an earlier start of this build pinned (no
    /// verification at this start).
    pub fn program_reused(&self) -> bool {
        matches!(self.ebpf, Program::Pinned(_))
    }

    /// Opens the maps pinned in `pin_dir` without loading a program, to change them: for
    /// `ban` and `unban` while no daemon runs (the caller holds the state lock). Rebuilds
    /// the ban filter. Fails when nothing is pinned there.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        Self::open_pins(pin_dir, Contents::Kept)
    }

    /// Like [`Dataplane::open_pinned`], to read only (`status`, while a daemon may be
    /// changing the maps): the ban filter is not rebuilt, and nothing is written.
    /// Rebuilding it here would race with the daemon: a filter computed from bans read
    /// before the daemon's latest ban would clear that ban's bit, and the program would
    /// stop dropping its packets.
    pub fn inspect_pinned(pin_dir: &Path) -> Result<Self> {
        Self::open_pins(pin_dir, Contents::ReadOnly)
    }

    fn open_pins(pin_dir: &Path, contents: Contents) -> Result<Self> {
        if !is_pinned(pin_dir) {
            bail!(
                "portsentry is not loaded: no pinned maps in {} (start it with `portsentry run`)",
                pin_dir.display()
            );
        }
        // A start that stopped after it replaced `PS_BANS` leaves the old program
        // running on the old map until the next start carries its bans over: a change
        // made here would not reach that program (a ban not enforced, an unban still
        // dropping), and could take bits of the filter it needs.
        if contents == Contents::Kept
            && let Some((name, _, pin)) = resize::replaced_pins(pin_dir).first()
        {
            bail!(
                "a start of portsentry stopped after it replaced {name} ({} is the old map, \
                 which the program in the links may still use): start the daemon \
                 (`portsentry run`), which carries that map's bans over, and ban or unban \
                 then",
                pin.display()
            );
        }
        let mut taken = std::collections::HashMap::new();
        for name in names::ALL {
            let path = pin_dir.join(name);
            if ADDED_MAPS.contains(&name) && !path.exists() {
                continue;
            }
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            taken.insert(name, Map::from_map_data(data)?);
        }
        Self::with_maps(
            Program::None,
            taken,
            Some(pin_dir.to_path_buf()),
            contents,
            Vec::new(),
        )
    }

    /// The dataplane over `taken`; the ban filters are rebuilt from the bans the maps
    /// hold when they were [`Contents::Kept`]. `resized`: the pinned maps replaced.
    fn with_maps(
        ebpf: Program,
        taken: std::collections::HashMap<&'static str, Map>,
        pin_dir: Option<PathBuf>,
        contents: Contents,
        resized: Vec<resize::Resized>,
    ) -> Result<Self> {
        let mut dp = Dataplane {
            ebpf,
            maps: maps::Maps::new(taken, contents == Contents::ReadOnly)?,
            pin_dir,
            settings: Settings::default(),
            attachments: Vec::new(),
            filter_users: filter_users::FilterUsers::new(names::BAN_FILTER_WORDS),
            net_filter: Default::default(),
            net_hash: Default::default(),
            bans_at_load: None,
            events_lost_at_load: 0,
            resized,
            unusable_replaced: Vec::new(),
            replaced_progs: None,
            ignore_words: None,
            local_words: None,
            ack_words: None,
            tcp_hooks: None,
            tcp_words: None,
            verified_in: None,
            blank: Blank::default(),
        };
        dp.settings = dp.read_settings()?;
        // Before the bans are read: a ban whose event is lost after this read is one the
        // daemon looks for ([`Dataplane::events_lost_at_load`]).
        dp.events_lost_at_load = dp
            .counter(portsentry_common::Counter::EventLost)
            .unwrap_or(0);
        // The program finds a ban's cache set by the number of sets in its settings.
        if contents != Contents::ReadOnly
            && let Some(sets) = dp.maps.ban_cache.sets()
        {
            let flags = with_ban_cache_sets(dp.settings.flags, sets);
            // ... and a tag's bucket by the same number.
            if let Some(tags) = &dp.maps.ban_tags
                && ban_tag_shift_of(flags) != tags.shift()
            {
                bail!(
                    "{} has 2^{} buckets where {} sets of {} call for 2^{}: run \
                     `portsentry unload`",
                    names::BAN_TAGS,
                    tags.shift(),
                    sets,
                    names::BAN_CACHE,
                    ban_tag_shift_of(flags)
                );
            }
            if flags != dp.settings.flags {
                dp.store_settings(Settings {
                    flags,
                    ..dp.settings
                })?;
            }
        }
        let read = match contents {
            Contents::ReadOnly => return Ok(dp),
            // Every filter word, cache slot and ban of a map just created is zero. The
            // arrays are known to stay so until this process writes them only while the
            // program is being verified: a program loaded at once can already run
            // (BPF_PROG_TEST_RUN) and write them.
            Contents::Created => {
                let verifying = matches!(dp.ebpf, Program::Verifying(_));
                dp.blank = Blank {
                    filter: verifying,
                    unused: verifying,
                };
                Vec::new()
            }
            Contents::Kept => {
                let read = dp.rebuild_ban_filter()?;
                // The ranges, read once for both of their tables.
                let nets =
                    sys::read_map(maps::fd(&dp.maps.ban_nets)).context("reading PS_BAN_NETS")?;
                dp.rebuild_net_filter(&nets)?;
                dp.rebuild_net_hash(&nets)?;
                read
            }
        };
        // Kept for the daemon's start (a process that only opened the pins has no use
        // for them).
        if !matches!(dp.ebpf, Program::None) {
            dp.bans_at_load = Some(read);
        }
        Ok(dp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pins of a release before the newest maps are the program's pins all the same
    /// (`status`, and `ban` or `unban` without the daemon, work on them; the next `run`
    /// adds the maps). The newest, `PS_LOCAL_FILTER`, was left out of the list: the
    /// program of the release before looked unloaded.
    #[test]
    fn pins_of_the_release_before_the_local_filter_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        for name in names::ALL.iter().filter(|n| **n != names::LOCAL_FILTER) {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert!(is_pinned(dir.path()));
        std::fs::remove_file(dir.path().join(names::BANS)).unwrap();
        assert!(
            !is_pinned(dir.path()),
            "a map every release pinned is missing"
        );
    }
}
