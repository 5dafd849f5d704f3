//! `PS_PROGS`, the program array through which the first program tail-calls its probe
//! stage: one per loaded program. A program pinned by an earlier start and reused runs
//! with the pinned array. A program loaded again gets an array of its own, which holds
//! its own stage and replaces the pinned one at the first attach: until the attach
//! replaces the old program in its links, the old program keeps calling its own stage,
//! with the old layout of what it hands over (`PS_PROBE`) and the old maps (a resize
//! gives the new stage new ones).
//!
//! A program array is emptied when no process holds it and no pin names it (that breaks
//! the loop of a program holding itself); so the pinned array of the old program is
//! held open until this process ends, for a link the attach did not reach yet.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, ProgramArray};
use portsentry_common::maps as names;

use super::{Dataplane, Program};

/// True when `pin_dir`'s `PS_PROGS` holds the probe stage (a reused program needs it).
pub(super) fn pinned_stage(pin_dir: &Path) -> bool {
    let Ok(data) = MapData::from_pin(pin_dir.join(names::PROGS)) else {
        return false;
    };
    Map::from_map_data(data)
        .ok()
        .and_then(|m| ProgramArray::try_from(m).ok())
        .is_some_and(|a| a.indices().any(|i| i.ok() == Some(names::PROBE_STAGE)))
}

/// The `PS_PROGS` pinned in `pin_dir`, opened, if there is one: a program loaded again
/// keeps it open and does not pin its own array in its place before the attach.
pub(super) fn pinned(pin_dir: &Path) -> Result<Option<MapData>> {
    let path = pin_dir.join(names::PROGS);
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(&path)
        .map(Some)
        .with_context(|| format!("opening the pinned map {}", path.display()))
}

impl Dataplane {
    /// Once the program is attached: its own `PS_PROGS` is pinned in place of the one
    /// the old program used (a pin under a temporary name, renamed over the old, so
    /// that the pin path always names one of the two). Idempotent.
    pub(super) fn pin_own_progs(&mut self) -> Result<()> {
        let (Some(dir), Some(old)) = (&self.pin_dir, &mut self.replaced_progs) else {
            return Ok(());
        };
        if old.pinned_own {
            return Ok(());
        }
        let Program::Loaded(ebpf) = &self.ebpf else {
            return Ok(());
        };
        let Some(own) = ebpf.map(names::PROGS) else {
            return Ok(());
        };
        let path = dir.join(names::PROGS);
        let tmp = dir.join(format!("{}_next", names::PROGS));
        let _ = std::fs::remove_file(&tmp);
        own.pin(&tmp).with_context(|| {
            format!(
                "pinning this program's {} at {}",
                names::PROGS,
                tmp.display()
            )
        })?;
        std::fs::rename(&tmp, &path).with_context(|| {
            format!(
                "replacing the pin {} by this program's array",
                path.display()
            )
        })?;
        old.pinned_own = true;
        Ok(())
    }
}

/// The `PS_PROGS` of the program this load replaces.
pub(super) struct ReplacedProgs {
    /// Held open until this process ends (see the module's comment).
    pub _held: MapData,
    /// This program's array is pinned in its place.
    pub pinned_own: bool,
}
