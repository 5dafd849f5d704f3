//! Pieces of `cargo xtask bench` that drive other tools: xdp-filter (Debian's
//! xdp-tools) for the per-packet comparison and PortSentry 1.2 for the reaction-time
//! comparison. Each runs in namespaces made here and is removed afterwards.

use std::{
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::net::UnixDatagram,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::netns::{Netns, sh};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// A file descriptor for the loaded BPF program with this id.
pub fn prog_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    #[repr(C, align(8))]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: u32,
    }
    let attr = Attr {
        id,
        next_id: 0,
        open_flags: 0,
        _pad: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_PROG_GET_FD_BY_ID.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// xdp-filter loaded (all features, default-allow) on a veth end in a namespace of its
/// own, with `banned` as a source to drop. Unloaded on drop.
pub struct XdpFilter {
    ns: Netns,
    pub fd: OwnedFd,
}

impl XdpFilter {
    /// `None` (with the reason printed) when xdp-filter is not installed or fails.
    pub fn load(banned: std::net::IpAddr) -> Option<XdpFilter> {
        if Command::new("xdp-filter").arg("--help").output().is_err() {
            eprintln!("xdp-filter is not installed: skipping it");
            return None;
        }
        let ns = Netns::new("xdpf");
        ns.exec(
            "ip link add xfa type veth peer name xfb && ip link set xfa up && ip link set xfb up",
        );
        let load = ns.try_exec("xdp-filter load -m native xfa");
        if !load.status.success() {
            eprintln!(
                "xdp-filter load failed: {}",
                String::from_utf8_lossy(&load.stderr)
            );
            return None;
        }
        ns.exec(&format!("xdp-filter ip {banned} -m src"));
        let out = ns.exec("ip -j -d link show xfa");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let id = json[0]["xdp"]["prog"]["id"].as_u64()? as u32;
        let fd = prog_fd_by_id(id).ok()?;
        Some(XdpFilter { ns, fd })
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = self.ns.try_exec("xdp-filter unload xfa");
    }
}

/// Debian's PortSentry 1.2 binary, unpacked (not installed) under `cache`.
pub fn portsentry12(cache: &Path) -> Option<PathBuf> {
    let bin = cache.join("root/usr/sbin/portsentry");
    if bin.exists() {
        return Some(bin);
    }
    std::fs::create_dir_all(cache).ok()?;
    let dl = Command::new("apt-get")
        .args(["download", "portsentry"])
        .current_dir(cache)
        .output()
        .ok()?;
    if !dl.status.success() {
        eprintln!(
            "apt-get download portsentry failed: {}",
            String::from_utf8_lossy(&dl.stderr)
        );
        return None;
    }
    let deb = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))?;
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(cache.join("root"))
        .status()
        .ok()?
        .success();
    (ok && bin.exists()).then_some(bin)
}

/// Runs PortSentry 1.2 in stealth TCP mode in `server`, with a config of its own (1.2
/// reads only /etc/portsentry/portsentry.conf: a private mount namespace binds a temp
/// folder there). Returns the folder (its history file shows each block). 1.2 logs its
/// attackalert lines only to syslog (`/dev/log`): the same mount namespace puts a
/// folder of the bench's over /dev holding `null` and a socket whose messages a thread
/// collects ([`Portsentry12::syslog`]).
pub struct Portsentry12 {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    created_etc: bool,
    syslog: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Portsentry12 {
    pub fn start(bin: &Path, server: &Netns, watched_port: u16) -> Portsentry12 {
        Portsentry12::start_mode(bin, server, watched_port, "-stcp")
    }

    /// Like [`Portsentry12::start`], in the mode `flag` (`-stcp`, `-atcp`).
    pub fn start_mode(bin: &Path, server: &Netns, watched_port: u16, flag: &str) -> Portsentry12 {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("portsentry.ignore"), "127.0.0.1/32\n").unwrap();
        std::fs::write(
            dir.path().join("portsentry.conf"),
            format!(
                "TCP_PORTS=\"1,{watched_port},31337\"\nUDP_PORTS=\"1\"\n\
                 ADVANCED_PORTS_TCP=\"1024\"\nADVANCED_PORTS_UDP=\"1024\"\n\
                 IGNORE_FILE=\"{d}/portsentry.ignore\"\nHISTORY_FILE=\"{d}/portsentry.history\"\n\
                 BLOCKED_FILE=\"{d}/portsentry.blocked\"\nRESOLVE_HOST=\"0\"\n\
                 BLOCK_UDP=\"1\"\nBLOCK_TCP=\"1\"\n\
                 KILL_ROUTE=\"/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP\"\n\
                 SCAN_TRIGGER=\"0\"\n"
            ),
        )
        .unwrap();
        let created_etc = !Path::new("/etc/portsentry").exists();
        if created_etc {
            std::fs::create_dir_all("/etc/portsentry").unwrap();
        }
        let dev = dir.path().join("dev");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("null"), "").unwrap();
        let socket = UnixDatagram::bind(dev.join("log")).expect("binding the syslog socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let syslog = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (lines, stopped) = (syslog.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
                    lines.lock().unwrap().push(line);
                }
            }
        });
        sh(&format!(
            "unshare --mount --propagation private sh -c 'mount --bind /dev/null {d}/dev/null && \
             mount --rbind {d}/dev /dev && mount --bind {d} /etc/portsentry && \
             nsenter --net=/run/netns/{ns} {bin} {flag}'",
            ns = server.name,
            bin = bin.display()
        ));
        // It detaches; give it a moment to open its raw socket.
        std::thread::sleep(Duration::from_millis(500));
        Portsentry12 {
            dir,
            bin: bin.to_path_buf(),
            created_etc,
            syslog,
            stop,
        }
    }

    /// The syslog lines 1.2 has written so far (`<29>Dec  3 04:02:09 portsentry[6016]:
    /// attackalert: ...`).
    pub fn syslog(&self) -> Vec<String> {
        self.syslog.lock().unwrap().clone()
    }

    /// Waits for `ip`'s history line; when it was seen.
    pub fn wait_blocked(&self, ip: std::net::IpAddr, timeout: Duration) -> Option<Instant> {
        let path = self.dir.path().join("portsentry.history");
        let needle = format!("/{ip} Port:");
        let start = Instant::now();
        while start.elapsed() < timeout {
            if std::fs::read_to_string(&path)
                .unwrap_or_default()
                .contains(&needle)
            {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    }
}

impl Drop for Portsentry12 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.bin.display().to_string())
            .status();
        if self.created_etc {
            let _ = std::fs::remove_dir("/etc/portsentry");
        }
    }
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
