//! A guest stand-in behind a real TAP.
//!
//! Firecracker moves frames between a TAP and the guest's virtio-net
//! device. [`TapGuest`] does the same between a TAP the library made and a
//! second TAP, `eth0`, in a namespace of its own configured like a guest
//! (address, MAC, default route): the kernel in that namespace is the
//! guest's network stack, so tests send real traffic from and to "the
//! guest" through the very TAP and namespace a VM would use.

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread::JoinHandle;

use firehost::net::ipam::MacAddr;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::netns::{GuestNs, disable_ipv6, ifname};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The guest's address, MAC and gateway.
#[derive(Debug, Clone, Copy)]
pub struct GuestConfig {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: MacAddr,
    pub gateway: Ipv4Addr,
}

/// A guest's network stack behind a TAP, alive while this value is.
pub struct TapGuest {
    /// The guest's namespace: sockets opened in it are the guest's.
    pub ns: GuestNs,
    stop: Option<OwnedFd>,
    pump: Option<JoinHandle<()>>,
}

/// Opens the TAP `name` in the calling thread's namespace, raw frames
/// without a packet-information header.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap();
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) one 40-byte ifreq, which
    // `req` is, for the duration of the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}

/// Opens the TAP `name` inside the namespace pinned at `netns` (or the
/// calling thread's, with `None`).
fn open_tap_in(netns: Option<&Path>, name: &str) -> OwnedFd {
    let Some(netns) = netns else {
        return open_tap(name).unwrap();
    };
    let ns = OwnedFd::from(std::fs::File::open(netns).unwrap());
    let name = name.to_owned();
    std::thread::spawn(move || {
        // SAFETY: `ns` is an open namespace file; only this thread moves.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
        open_tap(&name).unwrap()
    })
    .join()
    .unwrap()
}

impl TapGuest {
    /// Attaches a guest configured as `config` to the TAP `tap`, which is
    /// in the namespace pinned at `netns` (the VM's own) or, with `None`,
    /// in the calling thread's.
    pub fn attach(netns: Option<&Path>, tap: &str, config: GuestConfig) -> TapGuest {
        let vm_side = open_tap_in(netns, tap);
        let ns = GuestNs::new();
        let guest_side = ns.run_async(move |nl| async move {
            let fd = open_tap("eth0").unwrap();
            disable_ipv6("eth0");
            let index = nl
                .link(&ifname("eth0"))
                .await
                .unwrap()
                .unwrap()
                .header
                .index;
            let set = LinkUnspec::new_with_index(index)
                .address(config.mac.octets().to_vec())
                .build();
            nl.handle().link().set(set).execute().await.unwrap();
            nl.handle()
                .address()
                .add(index, config.ip.into(), config.prefix_len)
                .execute()
                .await
                .unwrap();
            let up = LinkUnspec::new_with_index(index).up().build();
            nl.handle().link().set(up).execute().await.unwrap();
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(config.gateway)
                .build();
            nl.handle().route().add(route).execute().await.unwrap();
            fd
        });
        let (stop_rx, stop_tx) = rustix::pipe::pipe().unwrap();
        let pump = std::thread::Builder::new()
            .name(format!("tap-guest-{tap}"))
            .spawn(move || pump(&vm_side, &guest_side, &stop_rx))
            .unwrap();
        TapGuest {
            ns,
            stop: Some(stop_tx),
            pump: Some(pump),
        }
    }
}

impl Drop for TapGuest {
    fn drop(&mut self) {
        // Closing the pipe's write end wakes the pump, which returns.
        drop(self.stop.take());
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

/// Copies frames both ways between `a` and `b` until `stop` is readable
/// (closed) or a side fails (its device went away with its namespace).
fn pump(a: &OwnedFd, b: &OwnedFd, stop: &OwnedFd) {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut frame = vec![0u8; 65536];
    loop {
        let mut fds = [
            PollFd::new(a, PollFlags::IN),
            PollFd::new(b, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        if poll(&mut fds, None).is_err() {
            return;
        }
        let ready: Vec<PollFlags> = fds.iter().map(PollFd::revents).collect();
        if !ready[2].is_empty() {
            return;
        }
        for (from, to, flags) in [(a, b, ready[0]), (b, a, ready[1])] {
            if flags.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                return;
            }
            if flags.contains(PollFlags::IN) {
                let Ok(n) = rustix::io::read(from.as_fd(), &mut frame) else {
                    return;
                };
                // A frame the other side cannot take now is lost, as on a
                // real link.
                let _ = rustix::io::write(to.as_fd(), &frame[..n]);
            }
        }
    }
}
