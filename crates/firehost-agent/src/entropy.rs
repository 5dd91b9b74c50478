//! Reseeding the guest kernel's random number generator with randomness
//! from the host (the `Reseed` request).
//!
//! A clone resumes with its snapshot's CRNG state, the same in every clone
//! of that snapshot; kernels with `VMGenID` support (5.18 on) reseed when
//! the VMM changes the generation id, others do not. `RNDADDENTROPY`
//! mixes the host's bytes into the input pool and credits them, and
//! `RNDRESEEDCRNG` makes the CRNG draw a new seed from the pool at once,
//! so the next read of `/dev/urandom` (and `getrandom`) in this clone
//! differs from its siblings'. Both need `CAP_SYS_ADMIN`: the agent runs
//! as root in the guest.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use firehost_proto::{MAX_RESEED_BYTES, MIN_RESEED_BYTES};

use crate::error::RequestError;

/// The device the ioctls go to.
const RANDOM_DEVICE: &str = "/dev/random";
/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Decodes `hex` (lowercase or uppercase, an even number of digits).
fn decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The randomness `hex` holds, checked against the protocol's bounds.
pub fn entropy_of(hex: &str) -> Result<Vec<u8>, RequestError> {
    let bytes = decode(hex).ok_or_else(|| RequestError::bad_request("the entropy is not hex"))?;
    if !(MIN_RESEED_BYTES..=MAX_RESEED_BYTES).contains(&bytes.len()) {
        return Err(RequestError::bad_request(format!(
            "the entropy is {} bytes; send {MIN_RESEED_BYTES} to {MAX_RESEED_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Mixes the randomness in `hex` into the kernel's pool and reseeds the
/// CRNG.
pub fn reseed(hex: &str) -> Result<(), RequestError> {
    let bytes = entropy_of(hex)?;
    let device = OpenOptions::new()
        .write(true)
        .open(RANDOM_DEVICE)
        .map_err(|e| RequestError::fs("open", RANDOM_DEVICE, e))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let len =
        i32::try_from(bytes.len()).map_err(|_| RequestError::bad_request("too much entropy"))?;
    let mut info: Vec<i32> = Vec::with_capacity(2 + bytes.len().div_ceil(4));
    info.push(len.saturating_mul(8));
    info.push(len);
    info.extend(bytes.chunks(4).map(|chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        i32::from_ne_bytes(word)
    }));
    let fd = device.as_raw_fd();
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow the two ints; `info` holds exactly that for the call.
    if unsafe { libc::ioctl(fd, RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(RequestError::fs(
            "RNDADDENTROPY",
            RANDOM_DEVICE,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(fd, RNDRESEEDCRNG) } != 0 {
        return Err(RequestError::fs(
            "RNDRESEEDCRNG",
            RANDOM_DEVICE,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_is_hex_within_bounds() {
        assert_eq!(entropy_of(&"ab".repeat(32)).unwrap(), vec![0xab; 32]);
        assert_eq!(entropy_of(&"AB".repeat(512)).unwrap().len(), 512);
        for bad in [
            "",
            "abc",
            &"zz".repeat(32),
            &"00".repeat(31),
            &"00".repeat(513),
            "é0",
        ] {
            assert!(
                matches!(entropy_of(bad), Err(RequestError::BadRequest { .. })),
                "{bad:?}"
            );
        }
    }
}
