//! Pseudo-terminals for `tty` execs.
//!
//! [`Pty::open`] allocates a pair from `/dev/ptmx` (devpts must be mounted
//! on `/dev/pts`, which [`crate::pid1`] does). The slave becomes the
//! process's stdin, stdout and stderr and its controlling terminal (the
//! exec's `pre_exec` runs `setsid` and `TIOCSCTTY`); the agent keeps the
//! master, non-blocking under tokio, to read output, write input and set
//! the window size.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::OFlags;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;

/// The size a terminal starts with: the request has no size, and the host
/// sends `Resize` once it knows one.
pub const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// A freshly allocated pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The agent's side.
    pub master: PtyMaster,
    /// The process's side (blocking, close-on-exec until it is `dup2`ed
    /// onto the process's stdio).
    pub slave: OwnedFd,
}

impl Pty {
    /// Allocates a pair sized `rows` x `cols`.
    ///
    /// Must be called inside a tokio runtime.
    pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
        let master = PtyMaster {
            fd: crate::fd::register(master)?,
        };
        master.resize(rows, cols)?;
        Ok(Pty { master, slave })
    }
}

/// The master side of a pseudo-terminal.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Reads what the process wrote; `Ok(0)` once every slave descriptor is
    /// closed (Linux reports that as `EIO`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is read unless it is returned.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *buf)?)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: part of `data` may have been written.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size (`TIOCSWINSZ`); the kernel sends `SIGWINCH` to
    /// the terminal's foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        Ok(rustix::termios::tcsetwinsize(self.fd.get_ref(), size)?)
    }

    /// The window size (`TIOCGWINSZ`) as (rows, columns).
    pub fn size(&self) -> io::Result<(u16, u16)> {
        let size = rustix::termios::tcgetwinsize(self.fd.get_ref())?;
        Ok((size.ws_row, size.ws_col))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pty_carries_bytes_and_keeps_its_size() {
        let pty = match Pty::open(DEFAULT_SIZE.0, DEFAULT_SIZE.1) {
            Ok(pty) => pty,
            Err(e) => {
                eprintln!("skipped: no pseudo-terminals here ({e})");
                return;
            }
        };
        assert_eq!(pty.master.size().unwrap(), DEFAULT_SIZE);
        pty.master.resize(50, 132).unwrap();
        assert_eq!(pty.master.size().unwrap(), (50, 132));
        // What the slave writes, the master reads (with ONLCR: "\r\n").
        rustix::io::write(&pty.slave, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = pty.master.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi\r\n");
        // With the slave closed, the master reads end of file, not an error.
        drop(pty.slave);
        assert_eq!(pty.master.read(&mut buf).await.unwrap(), 0);
    }
}
