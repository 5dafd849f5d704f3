//! The few raw system calls aya does not offer: batched map reads and writes, the state
//! of a pinned XDP link, and the BPF file system the pins live on.

use std::{
    os::{fd::BorrowedFd, unix::ffi::OsStrExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Opens the BPF object pinned at `pin` (BPF_OBJ_GET).
fn open_pin(pin: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C, align(8))]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
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
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface index a pinned XDP link is attached to: `Ok(0)` when something
/// detached it (`bpftool link detach`, the interface went away), an error when the pin
/// cannot be opened.
pub fn pinned_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
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
    let fd = open_pin(pin)?;
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

/// Detaches the link pinned at `pin` from its interface at once (BPF_LINK_DETACH: the
/// last reference's release, the pin's removal, detaches only later, from a work
/// queue), then removes the pin.
pub fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C, align(8))]
    struct Detach {
        link_fd: u32,
        // Zero, as the kernel requires of every byte past the command's members.
        _pad: u32,
    }
    let fd = open_pin(pin)?;
    bpf(
        BPF_LINK_DETACH,
        &mut Detach {
            link_fd: fd.as_raw_fd() as u32,
            _pad: 0,
        },
    )?;
    std::fs::remove_file(pin)
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

// ---- Batched map operations ----
//
// aya 0.14 offers map reads and writes one element at a time (one bpf(2) call each, two
// for an iteration step). With a million bans that is seconds at every start, so the
// whole-map reads and the bulk writes go through BPF_MAP_LOOKUP_BATCH and
// BPF_MAP_UPDATE_BATCH (Linux 5.6), called here with the map fd aya gives us. A kernel or
// map type without them (EINVAL, EOPNOTSUPP, or the kernel's internal ENOTSUPP) gets the
// same result one element at a time, through the same raw calls.

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's own "not supported" (not a libc errno), which bpf(2) can return.
const ENOTSUPP: i32 = 524;
/// Elements asked for per BPF_MAP_LOOKUP_BATCH call (a hash map needs room for one
/// whole bucket; it answers ENOSPC otherwise and the chunk is doubled).
const LOOKUP_CHUNK: usize = 16_384;
/// Elements written per BPF_MAP_UPDATE_BATCH call (bounds the time of one call).
const UPDATE_CHUNK: usize = 65_536;
/// Set (to anything) to make every batched map operation take the per-element path
/// (kernels whose batched operations misbehave; the tests of that path).
pub const NO_BATCH_ENV: &str = "PORTSENTRY_NO_MAP_BATCH";

/// `union bpf_attr` for the BPF_MAP_*_BATCH commands.
#[repr(C, align(8))]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` for the per-element commands.
#[repr(C, align(8))]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: `attr` is a bpf_attr prefix of its command whose pointers the caller made
    // valid for the sizes the map has; the kernel writes back only into `attr` and them.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn batches_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let allowed = std::env::var_os(NO_BATCH_ENV).is_none();
        if !allowed {
            log::info!(
                "{NO_BATCH_ENV} is set: BPF maps are read and written one element at a time"
            );
        }
        allowed
    })
}

/// True for the errors that say "no batched operations here" (rather than a failure of
/// this one); logs the first.
fn batch_unsupported(e: &std::io::Error) -> bool {
    let unsupported = matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    );
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if unsupported && !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::info!(
            "a BPF map has no batched operations here ({e}): it is read and written one \
             element at a time"
        );
    }
    unsupported
}

fn zeroed<T: aya::Pod>(n: usize) -> Vec<T> {
    // SAFETY: a Pod is plain data, valid as all zeroes.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// Every entry of a map (hash, array or trie; not per-CPU) whose keys are `K` and values
/// `V` (their sizes must be the map's): in batches where the kernel has them.
pub fn read_map<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>) -> std::io::Result<Vec<(K, V)>> {
    use std::os::fd::AsRawFd as _;
    if batches_allowed() {
        match lookup_batched(map.as_raw_fd() as u32) {
            Err(e) if batch_unsupported(&e) => {}
            other => return other,
        }
    }
    read_each(map.as_raw_fd() as u32)
}

fn lookup_batched<K: aya::Pod, V: aya::Pod>(fd: u32) -> std::io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut chunk = LOOKUP_CHUNK;
    // The position token is a key for arrays and tries, a bucket (u32) for hash maps.
    let token_words = size_of::<K>().max(4).div_ceil(8);
    let mut token = vec![0u64; token_words];
    let mut next = vec![0u64; token_words];
    let mut first = true;
    loop {
        let from = if first { 0 } else { token.as_ptr() as u64 };
        let Some(end) = lookup_once(fd, from, next.as_mut_ptr() as u64, &mut chunk, &mut out)?
        else {
            continue;
        };
        if end {
            return Ok(out);
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

/// One BPF_MAP_LOOKUP_BATCH of up to `chunk` entries from the position at `in_batch` (0:
/// the map's start), appended to `out`, the next position written at `out_batch`:
/// whether the map ended, or `None` when a hash bucket holds more than `chunk` (the
/// kernel answers ENOSPC; `chunk` is doubled: ask again).
fn lookup_once<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    in_batch: u64,
    out_batch: u64,
    chunk: &mut usize,
    out: &mut Vec<(K, V)>,
) -> std::io::Result<Option<bool>> {
    let mut keys: Vec<K> = zeroed(*chunk);
    let mut values: Vec<V> = zeroed(*chunk);
    let mut attr = BatchAttr {
        in_batch,
        out_batch,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: *chunk as u32,
        map_fd: fd,
        elem_flags: 0,
        flags: 0,
    };
    let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    let n = (attr.count as usize).min(*chunk);
    match rc {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
            *chunk *= 2;
            return Ok(None);
        }
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    out.extend(keys.into_iter().zip(values).take(n));
    // ENOENT: the end of the map (with the last entries in this answer).
    Ok(Some(rc.is_err()))
}

/// Every entry of a hash map of `max_entries` (not per-CPU), as [`read_map`] reads it,
/// by two threads at once: one the first half of its buckets, one the second. A hash map
/// of a million entries takes the kernel about 0.4 s to read (a cold bucket and a cold
/// element each); a restart's longest step.
///
/// A hash map's batch position is a bucket index, `roundup_pow_of_two(max_entries)`
/// buckets in all. The lower half's last batch can run past the middle: its entries from
/// there on are the upper half's first ones, found by the upper half's first key.
pub fn read_hash_map<K: aya::Pod + Send, V: aya::Pod + Send>(
    map: BorrowedFd<'_>,
    max_entries: u32,
) -> std::io::Result<Vec<(K, V)>> {
    use std::os::fd::AsRawFd as _;
    let buckets = max_entries.checked_next_power_of_two().unwrap_or(0);
    if !batches_allowed() || buckets < 4 * LOOKUP_CHUNK as u32 {
        return read_map(map);
    }
    let fd = map.as_raw_fd() as u32;
    let middle = buckets / 2;
    let (lower, upper) = std::thread::scope(|s| {
        let upper = s.spawn(|| lookup_hash_range::<K, V>(fd, middle, None));
        let lower = lookup_hash_range::<K, V>(fd, 0, Some(middle));
        (lower, upper.join())
    });
    let upper = upper.map_err(|_| std::io::Error::other("a map reader's thread panicked"))?;
    let ((mut lower, last_batch), (upper, _)) = match (lower, upper) {
        (Ok(l), Ok(u)) => (l, u),
        (Err(e), _) | (_, Err(e)) if batch_unsupported(&e) => return read_each(fd),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    if let Some((first, _)) = upper.first()
        && let Some(at) = lower[last_batch..]
            .iter()
            .position(|(k, _)| pod_bytes(k) == pod_bytes(first))
    {
        lower.truncate(last_batch + at);
    }
    lower.extend(upper);
    Ok(lower)
}

fn pod_bytes<T: aya::Pod>(t: &T) -> &[u8] {
    // SAFETY: a Pod is plain data: all of its bytes are initialized.
    unsafe { std::slice::from_raw_parts((t as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The entries of a hash map's buckets from `from` on, until a batch ends at or past
/// bucket `until` (or the map's end); and where the last batch's entries start.
fn lookup_hash_range<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    from: u32,
    until: Option<u32>,
) -> std::io::Result<(Vec<(K, V)>, usize)> {
    let mut out = Vec::new();
    let mut chunk = LOOKUP_CHUNK;
    let mut token: u32 = from;
    let mut next: u32 = 0;
    loop {
        let last_batch = out.len();
        let in_batch = &token as *const u32 as u64;
        let out_batch = &mut next as *mut u32 as u64;
        let Some(end) = lookup_once(fd, in_batch, out_batch, &mut chunk, &mut out)? else {
            continue;
        };
        if end || until.is_some_and(|u| next >= u) {
            return Ok((out, last_batch));
        }
        token = next;
    }
}

fn read_each<K: aya::Pod, V: aya::Pod>(fd: u32) -> std::io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut key: Option<K> = None;
    loop {
        let mut next: K = zeroed(1).remove(0);
        let mut attr = ElemAttr {
            map_fd: fd,
            _pad: 0,
            key: key.as_ref().map_or(0, |k| k as *const K as u64),
            value_or_next_key: &mut next as *mut K as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            r => r?,
        }
        let mut value: V = zeroed(1).remove(0);
        let mut attr = ElemAttr {
            map_fd: fd,
            _pad: 0,
            key: &next as *const K as u64,
            value_or_next_key: &mut value as *mut V as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // Deleted between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => {
                r?;
                out.push((next, value));
            }
        }
        key = Some(next);
    }
}

/// The key after `key` in `map` (its first with `None`; `None` past the last). In an
/// LPM trie, the key after one the trie does not hold is its first.
pub fn next_key<K: aya::Pod>(map: BorrowedFd<'_>, key: Option<&K>) -> std::io::Result<Option<K>> {
    let mut next: K = zeroed(1).remove(0);
    let mut attr = ElemAttr {
        map_fd: std::os::fd::AsRawFd::as_raw_fd(&map) as u32,
        _pad: 0,
        key: key.map_or(0, |k| k as *const K as u64),
        value_or_next_key: &mut next as *mut K as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(Some(next)),
    }
}

/// The value of `key` in a map whose values are `value_len` bytes (a map of an earlier
/// release's shape, which no type of this one fits).
pub fn lookup_bytes(map: BorrowedFd<'_>, key: &[u8], value_len: usize) -> std::io::Result<Vec<u8>> {
    let mut value = vec![0u8; value_len];
    elem_bytes(BPF_MAP_LOOKUP_ELEM, map, key, value.as_mut_ptr() as u64)?;
    Ok(value)
}

/// Writes `value` (the map's value size) at `key`, the counterpart of [`lookup_bytes`].
pub fn update_bytes(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    elem_bytes(BPF_MAP_UPDATE_ELEM, map, key, value.as_ptr() as u64)
}

/// One per-element command on `key`, with the value at `value` (of the map's size).
fn elem_bytes(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: &[u8],
    value: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value_or_next_key: value,
        flags: 0,
    };
    bpf(cmd, &mut attr)
}

/// A write of many entries that stopped: how many were written before `error`.
#[derive(Debug)]
pub struct WriteError {
    pub written: usize,
    pub error: std::io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after {} entries)", self.error, self.written)
    }
}

impl std::error::Error for WriteError {}

/// [`write_map`] of many entries, split over a thread per CPU (up to 4): a hash map's
/// buckets are locked one by one, so the writers rarely wait for each other (a million
/// bans written after a reboot took a second from one thread). An error is the first
/// part's that failed, its `written` counted from the start of `keys`.
pub fn write_map_parallel<K: aya::Pod + Sync, V: aya::Pod + Sync>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), WriteError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAP_WRITERS_MAX));
    if threads < 2 || keys.len() < PARALLEL_WRITE_MIN {
        return write_map(map, keys, values);
    }
    let part = keys.len().div_ceil(threads);
    let results: Vec<Result<(), WriteError>> = std::thread::scope(|s| {
        let writers: Vec<_> = keys
            .chunks(part)
            .zip(values.chunks(part))
            .enumerate()
            .map(|(n, (k, v))| {
                s.spawn(move || {
                    write_map(map, k, v).map_err(|e| WriteError {
                        written: n * part + e.written,
                        error: e.error,
                    })
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("a map writer's thread panicked"))
            .collect()
    });
    results.into_iter().collect()
}

/// The most threads [`write_map_parallel`] writes one map from. A map without
/// preallocation may end up holding up to one fewer entries than this over its size:
/// the kernel checks for room and then counts the new entry, not as one step, so
/// writers at its last free entry may all pass the check.
pub const MAP_WRITERS_MAX: usize = 4;

/// Fewer entries than this are written from one thread.
const PARALLEL_WRITE_MIN: usize = 1 << 16;

/// Writes `keys[i]` = `values[i]` into a map (BPF_ANY: added or replaced), in batches
/// where the kernel has them, in order.
pub fn write_map<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), WriteError> {
    use std::os::fd::AsRawFd as _;
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.as_raw_fd() as u32;
    let mut written = 0;
    if batches_allowed() {
        while written < keys.len() {
            let end = (written + UPDATE_CHUNK).min(keys.len());
            let mut attr = BatchAttr {
                in_batch: 0,
                out_batch: 0,
                keys: keys[written..end].as_ptr() as u64,
                values: values[written..end].as_ptr() as u64,
                count: (end - written) as u32,
                map_fd: fd,
                elem_flags: 0,
                flags: 0,
            };
            match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
                Ok(()) => written = end,
                Err(error) if batch_unsupported(&error) && attr.count == 0 => break,
                Err(error) => {
                    return Err(WriteError {
                        written: written + attr.count as usize,
                        error,
                    });
                }
            }
        }
    }
    for (k, v) in keys.iter().zip(values).skip(written) {
        let mut attr = ElemAttr {
            map_fd: fd,
            _pad: 0,
            key: k as *const K as u64,
            value_or_next_key: v as *const V as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|error| WriteError { written, error })?;
        written += 1;
    }
    Ok(())
}

/// Waits until every run of a BPF program that began before the call has ended: one RCU
/// grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)` runs `synchronize_rcu`, and an XDP
/// program runs inside an RCU read-side section). Where the kernel refuses the command
/// (`nohz_full` CPUs), and on one CPU, where it returns at once (a preemptible kernel
/// could still be inside a run there), a 50 ms sleep, far longer than any program run.
pub fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointer.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    // SAFETY: sysconf reads a value.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if r != 0 || cpus <= 1 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
