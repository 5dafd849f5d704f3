//! BPF_PROG_TEST_RUN: runs a loaded program over a frame without any interface.

use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one BPF_PROG_TEST_RUN call returned.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    /// The program's return value (the XDP action).
    pub retval: u32,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Runs `prog` over `frame` `repeat` times (at least once).
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> std::io::Result<RunResult> {
    run_out(prog, frame, repeat).map(|(r, _)| r)
}

/// Like [`run`], also returning the frame as the program left it (for XDP_TX).
pub fn run_out(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> std::io::Result<(RunResult, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix; the buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((
        RunResult {
            retval: attr.retval,
            duration_ns: attr.duration,
        },
        out,
    ))
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The `prog load` member of `union bpf_attr`, up to the fields we set.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads the smallest XDP program there is, `r0 = XDP_PASS; exit`: the floor every
/// per-packet cost is compared with.
pub fn load_pass_program() -> std::io::Result<std::os::fd::OwnedFd> {
    // mov64 r0, 2 ; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    load_xdp(&insns, b"xdp_pass", 0)
}

/// Loads hand-assembled XDP instructions (`name` at most 15 bytes); a rejection carries
/// the verifier's log.
pub fn load_xdp(
    insns: &[u64],
    name: &[u8],
    expected_attach_type: u32,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len()].copy_from_slice(name);
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        expected_attach_type,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix; the buffers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        return Err(std::io::Error::new(
            e.kind(),
            format!("{e}: {}", String::from_utf8_lossy(&log[..end])),
        ));
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Median of `rounds` BPF_PROG_TEST_RUN calls of `repeat` runs each: nanoseconds per run.
pub fn median_ns(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32, rounds: usize) -> u32 {
    let mut v: Vec<u32> = (0..rounds)
        .map(|_| run(prog, frame, repeat).expect("test run").duration_ns)
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}
