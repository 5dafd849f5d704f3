//! Per-packet cost over many distinct sources: BPF_PROG_TEST_RUN runs one frame again
//! and again, so a program measured through it alone always sees the same source (one
//! hash bucket, one cache slot, all warm). Here a small program runs first: it gives
//! each run the next IPv4 source of a range (`base + n % count`, written into the frame)
//! and tail-calls the program measured. The same front program tail-calling the
//! XDP_PASS program is the floor the cost is read against.
//!
//! Two reference programs ([`Reference`]) measure, through the same front program, the
//! least any structure of a million entries costs a packet from another source each
//! time: one read of a large array (one cache line the CPU does not hold), and a bare
//! lookup in a kernel hash map of the sources.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
/// Each element allocated when it is inserted, as `PS_BANS` is.
const BPF_F_NO_PREALLOC: u32 = 1;
/// What aya loads an XDP program with (BPF_XDP): a tail call needs caller and callee
/// of the same expected attach type.
const BPF_XDP: u32 = 37;
/// Offset of the IPv4 source address in an untagged Ethernet frame.
const V4_SRC: i16 = 14 + 12;

#[repr(C, align(8))]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C, align(8))]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<i64> {
    // SAFETY: `attr` is a bpf_attr prefix of its command; its pointers are valid for
    // the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, size_of::<A>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn map(map_type: u32, value_size: u32) -> std::io::Result<OwnedFd> {
    map_of(map_type, value_size, 1, 0)
}

/// A map of 4-byte keys.
fn map_of(
    map_type: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> std::io::Result<OwnedFd> {
    let attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &attr)? as i32) })
}

/// Writes `value` under the 4-byte `key`.
fn update(map: BorrowedFd<'_>, key: u32, value: &[u8]) -> std::io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        },
    )?;
    Ok(())
}

/// The first instructions of the reference programs: `r7` = the IPv4 source as the
/// frame holds it (network order); a frame too short jumps to `out`, which comes
/// `then` instructions after these.
fn source_into_r7(then: i16) -> [u64; 7] {
    [
        insn(0xbf, 6, 1, 0, 0),                     // r6 = ctx
        insn(0x61, 2, 6, 0, 0),                     // r2 = ctx->data
        insn(0x61, 3, 6, 4, 0),                     // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),                     // r4 = r2
        insn(0x07, 4, 0, 0, i32::from(V4_SRC) + 4), // r4 += end of the source
        insn(0x2d, 4, 3, then + 1, 0),              // if r4 > r3 goto out
        insn(0x61, 7, 2, V4_SRC, 0),                // r7 = *(u32 *)(r2 + source)
    ]
}

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let [o0, o1] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    u64::from_le_bytes([code, src << 4 | dst, o0, o1, i0, i1, i2, i3])
}

/// `dst = map fd` (a two-slot load the kernel turns into the map's address).
fn ld_map(dst: u8, fd: BorrowedFd<'_>) -> [u64; 2] {
    [insn(0x18, dst, 1, 0, fd.as_raw_fd()), 0]
}

fn load(insns: &[u64], name: &[u8]) -> std::io::Result<OwnedFd> {
    crate::testrun::load_xdp(insns, name, BPF_XDP)
}

/// `r0 = XDP_PASS; exit`, loaded as aya loads an XDP program (so that it can be
/// tail-called from the front program).
pub fn pass_program() -> std::io::Result<OwnedFd> {
    load(
        &[insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)],
        b"xdp_pass",
    )
}

/// `r0` = the value of `map` under the 4-byte key in `r7` (NULL when absent).
fn lookup_r7(map: BorrowedFd<'_>) -> [u64; 6] {
    let [ld0, ld1] = ld_map(1, map); // r1 = map
    [
        insn(0x63, 10, 7, -4, 0), // *(u32 *)(r10 - 4) = r7
        insn(0xbf, 2, 10, 0, 0),  // r2 = r10
        insn(0x07, 2, 0, 0, -4),  // r2 += -4
        ld0,
        ld1,
        insn(0x85, 0, 0, 0, 1), // call bpf_map_lookup_elem
    ]
}

/// A reference program and its map.
pub struct Reference {
    prog: OwnedFd,
    _map: OwnedFd,
}

impl Reference {
    /// Reads one u64 of an array of `words` (a power of two) at a multiplicative hash
    /// of the IPv4 source, and passes: the one cache line any structure of that size
    /// costs a packet whose source the CPU has not seen lately.
    pub fn cold_read(words: u32) -> std::io::Result<Reference> {
        assert!(words.is_power_of_two() && words > 1);
        let array = map_of(BPF_MAP_TYPE_ARRAY, 8, words, 0)?;
        let shift = 32 - words.trailing_zeros() as i32;
        let mut p = source_into_r7(10).to_vec();
        p.extend([
            insn(0x24, 7, 0, 0, 0x9e37_79b1_u32 as i32), // w7 *= golden ratio
            insn(0x74, 7, 0, 0, shift),                  // w7 >>= 32 - log2(words)
        ]);
        p.extend(lookup_r7(array.as_fd()));
        p.extend([
            insn(0x15, 0, 0, 1, 0), // if r0 == 0 goto out
            insn(0x79, 1, 0, 0, 0), // r1 = *(u64 *)(r0 + 0)
            insn(0xb7, 0, 0, 0, 2), // out: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0), // exit
        ]);
        Ok(Reference {
            prog: load(&p, b"ps_ref_cold")?,
            _map: array,
        })
    }

    /// Looks the IPv4 source up in a hash map (`BPF_F_NO_PREALLOC`, as `PS_BANS`)
    /// holding the `count` sources from `base`, and drops what it finds: a ban check
    /// with nothing else.
    pub fn hash_lookup(base: std::net::Ipv4Addr, count: u32) -> std::io::Result<Reference> {
        let hash = map_of(BPF_MAP_TYPE_HASH, 8, count, BPF_F_NO_PREALLOC)?;
        for i in 0..count {
            let key = u32::from_ne_bytes((u32::from(base) + i).to_be_bytes());
            update(hash.as_fd(), key, &[0; 8])?;
        }
        let mut p = source_into_r7(9).to_vec();
        p.extend(lookup_r7(hash.as_fd()));
        p.extend([
            insn(0x15, 0, 0, 2, 0), // if r0 == 0 goto out
            insn(0xb7, 0, 0, 0, 1), // r0 = XDP_DROP
            insn(0x95, 0, 0, 0, 0), // exit
            insn(0xb7, 0, 0, 0, 2), // out: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0), // exit
        ]);
        Ok(Reference {
            prog: load(&p, b"ps_ref_hash")?,
            _map: hash,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

/// The front program and the maps it holds.
pub struct Rotator {
    prog: OwnedFd,
    _counter: OwnedFd,
    _target: OwnedFd,
}

impl Rotator {
    /// A front program that gives run n the IPv4 source `base + n % count` and then
    /// runs `target` (an XDP program loaded as aya loads one).
    pub fn new(
        target: BorrowedFd<'_>,
        base: std::net::Ipv4Addr,
        count: u32,
    ) -> std::io::Result<Rotator> {
        let base = u32::from(base);
        assert!(
            base < 1 << 31,
            "base {base:#x}: an immediate is a signed 32-bit value"
        );
        assert!(count > 0 && count < 1 << 31);
        let counter = map(BPF_MAP_TYPE_ARRAY, 8)?;
        let slots = map(BPF_MAP_TYPE_PROG_ARRAY, 4)?;
        update(slots.as_fd(), 0, &(target.as_raw_fd() as u32).to_ne_bytes())?;
        let mut p = vec![
            insn(0xbf, 6, 1, 0, 0),   // r6 = ctx
            insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0
            insn(0xbf, 2, 10, 0, 0),  // r2 = r10
            insn(0x07, 2, 0, 0, -4),  // r2 += -4
        ];
        p.extend(ld_map(1, counter.as_fd())); // r1 = counter
        p.extend([
            insn(0x85, 0, 0, 0, 1),                     // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 17, 0),                    // if r0 == 0 goto out
            insn(0x79, 7, 0, 0, 0),                     // r7 = *(u64 *)(r0 + 0)
            insn(0x07, 7, 0, 0, 1),                     // r7 += 1
            insn(0x7b, 0, 7, 0, 0),                     // *(u64 *)(r0 + 0) = r7
            insn(0x97, 7, 0, 0, count as i32),          // r7 %= count
            insn(0x07, 7, 0, 0, base as i32),           // r7 += base
            insn(0xdc, 7, 0, 0, 32),                    // r7 = be32 r7
            insn(0x61, 2, 6, 0, 0),                     // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),                     // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),                     // r4 = r2
            insn(0x07, 4, 0, 0, i32::from(V4_SRC) + 4), // r4 += end of the source
            insn(0x2d, 4, 3, 6, 0),                     // if r4 > r3 goto out
            insn(0x63, 2, 7, V4_SRC, 0),                // *(u32 *)(r2 + source) = r7
            insn(0xbf, 1, 6, 0, 0),                     // r1 = ctx
        ]);
        p.extend(ld_map(2, slots.as_fd())); // r2 = slots
        p.extend([
            insn(0xb7, 3, 0, 0, 0),  // r3 = 0
            insn(0x85, 0, 0, 0, 12), // call bpf_tail_call
            insn(0xb7, 0, 0, 0, 2),  // out: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),  // exit
        ]);
        let prog = load(&p, b"ps_rotate")?;
        Ok(Rotator {
            prog,
            _counter: counter,
            _target: slots,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}
