//! The daemon's XDP link as an administrator sees it, without bpftool: read with aya
//! (`bpftool link show pinned PATH`) and detached with BPF_LINK_DETACH
//! (`bpftool link detach id ID`), so the tests need nothing beyond the kernel.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya::programs::{
    links::{FdLink, LinkType, PinnedLink},
    loaded_links, loaded_programs,
};

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// What the kernel reports about a link.
#[derive(Debug, Clone, Copy)]
pub struct LinkState {
    pub id: u32,
    pub program_id: u32,
    pub link_type: LinkType,
}

/// The link pinned at `pin` (panics if there is none).
pub fn pinned_link(pin: &Path) -> LinkState {
    let link = PinnedLink::from_pin(pin)
        .unwrap_or_else(|e| panic!("opening the link pinned at {}: {e}", pin.display()));
    // Dropping the FdLink only closes our descriptor: the pin keeps the link attached.
    let info = FdLink::from(link)
        .info()
        .unwrap_or_else(|e| panic!("reading the link pinned at {}: {e}", pin.display()));
    LinkState {
        id: info.id(),
        program_id: info.program_id(),
        link_type: info
            .link_type()
            .unwrap_or_else(|e| panic!("the link pinned at {}: {e}", pin.display())),
    }
}

/// Whether the kernel lists a link with this id among all loaded links.
pub fn link_is_loaded(id: u32) -> bool {
    loaded_links().filter_map(Result::ok).any(|l| l.id() == id)
}

/// The name of the loaded program with this id, if there is one.
pub fn program_name(id: u32) -> Option<String> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
}

/// Detaches the link with this id from its hook, as `bpftool link detach id ID` does:
/// the link (and its pin) stays, attached to nothing.
pub fn detach_link(id: u32) -> std::io::Result<()> {
    /// The `link_id` member of `union bpf_attr` (BPF_LINK_GET_FD_BY_ID).
    #[repr(C, align(8))]
    struct GetFdById {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: u32,
    }
    /// The `link_detach` member of `union bpf_attr`.
    #[repr(C, align(8))]
    struct LinkDetach {
        link_fd: u32,
        _pad: u32,
    }
    let get = GetFdById {
        link_id: id,
        next_id: 0,
        open_flags: 0,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_GET_FD_BY_ID.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            &get as *const GetFdById,
            std::mem::size_of::<GetFdById>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let detach = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH; fd is open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            std::mem::size_of::<LinkDetach>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
