//! Maps pinned as an earlier release pinned them, made with the raw `bpf(2)` calls (the
//! object of this release has no such map): for the tests that upgrade over them.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: a zeroed bpf_attr of 128 bytes whose pointers point at live buffers.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    assert!(rc >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    rc
}

/// Pins at `path` a map of `map_type` with keys of `key_size` bytes and values of
/// `value_size`, `max_entries` of them, holding `entries` (key and value bytes).
pub fn pin_map(
    path: &Path,
    map_type: u32,
    (key_size, value_size, max_entries): (u32, u32, u32),
    entries: &[(&[u8], &[u8])],
) {
    let mut attr = [0u64; 16];
    // map_type, key_size; value_size, max_entries.
    attr[0] = u64::from(map_type) | u64::from(key_size) << 32;
    attr[1] = u64::from(value_size) | u64::from(max_entries) << 32;
    let fd = bpf(BPF_MAP_CREATE, &mut attr) as u32;
    for (key, value) in entries {
        assert_eq!(
            (key.len(), value.len()),
            (key_size as usize, value_size as usize)
        );
        let mut attr = [0u64; 16];
        attr[0] = u64::from(fd);
        attr[1] = key.as_ptr() as u64;
        attr[2] = value.as_ptr() as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr);
    }
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd);
    bpf(BPF_OBJ_PIN, &mut attr);
    // SAFETY: the fd this function created; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}
