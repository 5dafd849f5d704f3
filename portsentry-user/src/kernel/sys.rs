//! The few raw system calls aya does not offer: the state of a pinned XDP link, and the
//! BPF file system the pins live on.

use std::{os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{Context as _, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The interface index a pinned XDP link is attached to: `Ok(0)` when something
/// detached it (`bpftool link detach`, the interface went away), an error when the pin
/// cannot be opened.
pub fn pinned_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
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
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
