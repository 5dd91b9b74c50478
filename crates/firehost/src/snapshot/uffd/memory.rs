//! The memory file, mapped read-only and shared, and the guest regions
//! Firecracker describes in the handshake.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use serde::{Deserialize, Serialize};

use super::{MappingProblem, PageServerError};

/// The host's base page size in bytes (4 KiB on `x86_64`, and on `aarch64`
/// as Firecracker builds it).
pub(crate) fn host_page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// A read-only, shared mapping of a whole file: the pages come from the page
/// cache, so VMs restored from one bundle share them.
///
/// The mapping is only ever handed to the kernel as a source address (for
/// `UFFDIO_COPY`), never read through a Rust reference, so another process
/// changing or truncating the file cannot cause undefined behaviour here;
/// at worst a copy fails with `EFAULT`.
#[derive(Debug)]
pub(crate) struct ReadOnlyMap {
    ptr: NonNull<u8>,
    len: u64,
}

// SAFETY: the mapping is read-only and never dereferenced in this process
// (only its address is passed to the kernel), so sharing or moving it across
// threads cannot race; it is unmapped once, by `Drop`.
unsafe impl Send for ReadOnlyMap {}
// SAFETY: as for `Send`: `&ReadOnlyMap` only exposes addresses.
unsafe impl Sync for ReadOnlyMap {}

impl ReadOnlyMap {
    /// Maps the first `len` bytes of `file` with `PROT_READ` and
    /// `MAP_SHARED`, at an address the kernel picks (never `MAP_FIXED`).
    /// Refuses an empty length and one past the file's end, where touching
    /// the mapping would `SIGBUS`.
    pub(crate) fn new(file: &File, len: u64) -> Result<ReadOnlyMap, Errno> {
        let file_len = rustix::fs::fstat(file)?.st_size;
        if len == 0 || u64::try_from(file_len).map_or(true, |f| len > f) {
            return Err(Errno::INVAL);
        }
        let len_usize = usize::try_from(len).map_err(|_| Errno::NOMEM)?;
        // SAFETY: a null hint without MAP_FIXED lets the kernel choose a free
        // range, so no existing mapping is replaced; the length is non-zero
        // and within the file; the result is only used as a source address.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len_usize,
                ProtFlags::READ,
                MapFlags::SHARED,
                file.as_fd(),
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(ReadOnlyMap { ptr, len })
    }

    /// The mapped length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The address of `offset`, after checking that `[offset, offset + len)`
    /// lies inside the mapping.
    pub(crate) fn source(&self, offset: u64, len: u64) -> Option<*const u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let offset = usize::try_from(offset).ok()?;
        Some(self.ptr.as_ptr().wrapping_add(offset).cast_const())
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        let len = usize::try_from(self.len).expect("mapped lengths fit in usize");
        // SAFETY: `ptr` and `len` are exactly what mmap returned and were
        // given; nothing refers into the mapping once its owner drops it.
        let r = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), len) };
        if let Err(errno) = r {
            tracing::error!(%errno, "munmap of the memory file failed");
            debug_assert!(false, "munmap of the memory file failed: {errno}");
        }
    }
}

/// The memory file of a snapshot bundle, open and mapped.
#[derive(Debug)]
pub(crate) struct MemoryFile {
    pub(crate) map: ReadOnlyMap,
}

impl MemoryFile {
    pub(crate) fn open(path: &Path) -> Result<MemoryFile, PageServerError> {
        let file = File::open(path).map_err(|source| PageServerError::OpenMemoryFile {
            path: path.to_owned(),
            source: Arc::new(source),
        })?;
        let len = file
            .metadata()
            .map_err(|source| PageServerError::OpenMemoryFile {
                path: path.to_owned(),
                source: Arc::new(source),
            })?
            .len();
        if len == 0 {
            return Err(PageServerError::EmptyMemoryFile {
                path: path.to_owned(),
            });
        }
        let map =
            ReadOnlyMap::new(&file, len).map_err(|source| PageServerError::MapMemoryFile {
                path: path.to_owned(),
                source,
            })?;
        Ok(MemoryFile { map })
    }
}

/// One guest memory region as Firecracker describes it in the handshake
/// (`GuestRegionUffdMapping` in Firecracker's `persist.rs`): where it lives
/// in Firecracker's address space and where its content starts in the
/// memory file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionMapping {
    /// Start of the region in Firecracker's address space.
    pub base_host_virt_addr: u64,
    /// Length of the region in bytes.
    pub size: u64,
    /// Where the region's content starts in the memory file, in bytes.
    pub offset: u64,
    /// The region's page size in bytes (4096, or 2 MiB with huge pages).
    /// Older Firecrackers send only `page_size_kib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    /// Deprecated twin of `page_size`. Despite its name Firecracker v1.16.1
    /// fills it with bytes too; it is read only when `page_size` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size_kib: Option<u64>,
}

impl GuestRegionMapping {
    /// The page size in bytes: `page_size`, else `page_size_kib` (which is
    /// bytes as well, see the module docs).
    pub fn page_size_bytes(&self) -> Option<u64> {
        self.page_size.or(self.page_size_kib)
    }
}

/// A checked region: every field page-aligned, the file range inside the
/// memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) base: u64,
    pub(crate) size: u64,
    pub(crate) offset: u64,
    pub(crate) page_size: u64,
}

impl Region {
    pub(crate) fn pages(&self) -> u64 {
        self.size / self.page_size
    }

    pub(crate) fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

/// Checks the shape of the mappings (non-empty, page sizes, alignment, no
/// overflow, no overlap) and that every region's content lies inside a
/// memory file of `file_bytes`.
pub(crate) fn validate(
    mappings: &[GuestRegionMapping],
    file_bytes: u64,
) -> Result<Vec<Region>, PageServerError> {
    let regions = validate_shape(mappings)?;
    for (index, r) in regions.iter().enumerate() {
        let needed_bytes = r.offset + r.size;
        if needed_bytes > file_bytes {
            return Err(PageServerError::MemoryFileTooShort {
                region: index,
                needed_bytes,
                file_bytes,
            });
        }
    }
    Ok(regions)
}

/// The part of [`validate`] that does not look at the memory file: what is
/// needed to fence the regions when the file is the problem.
pub(crate) fn validate_shape(
    mappings: &[GuestRegionMapping],
) -> Result<Vec<Region>, PageServerError> {
    if mappings.is_empty() {
        return Err(PageServerError::NoMappings);
    }
    let host = host_page_size();
    let mut regions = Vec::with_capacity(mappings.len());
    for (index, m) in mappings.iter().enumerate() {
        let bad = |problem| PageServerError::InvalidMapping {
            region: index,
            problem,
        };
        let page_size = m.page_size_bytes().ok_or(bad(MappingProblem::NoPageSize))?;
        if !page_size.is_power_of_two() || page_size < host {
            return Err(bad(MappingProblem::PageSize { page_size }));
        }
        if m.size == 0 {
            return Err(bad(MappingProblem::Empty));
        }
        if m.base_host_virt_addr % page_size != 0
            || m.size % page_size != 0
            || m.offset % page_size != 0
        {
            return Err(bad(MappingProblem::Unaligned { page_size }));
        }
        if m.base_host_virt_addr.checked_add(m.size).is_none()
            || m.offset.checked_add(m.size).is_none()
        {
            return Err(bad(MappingProblem::Overflow));
        }
        regions.push(Region {
            base: m.base_host_virt_addr,
            size: m.size,
            offset: m.offset,
            page_size,
        });
    }
    let mut sorted: Vec<(usize, Region)> = regions.iter().copied().enumerate().collect();
    sorted.sort_by_key(|(_, r)| r.base);
    for pair in sorted.windows(2) {
        let (_, a) = pair[0];
        let (index, b) = pair[1];
        if a.base + a.size > b.base {
            return Err(PageServerError::InvalidMapping {
                region: index,
                problem: MappingProblem::Overlap,
            });
        }
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(base: u64, size: u64, offset: u64, page_size: u64) -> GuestRegionMapping {
        GuestRegionMapping {
            base_host_virt_addr: base,
            size,
            offset,
            page_size: Some(page_size),
            page_size_kib: Some(page_size),
        }
    }

    #[test]
    fn firecracker_handshake_parses_with_both_page_size_fields() {
        let json = r#"[{"base_host_virt_addr":140000000000000,"size":1048576,"offset":0,
            "page_size":4096,"page_size_kib":4096}]"#;
        let m: Vec<GuestRegionMapping> = serde_json::from_str(json).unwrap();
        assert_eq!(m[0].page_size_bytes(), Some(4096));
        assert_eq!(m[0].size, 1 << 20);
    }

    #[test]
    fn page_size_kib_alone_is_read_as_bytes() {
        let json = r#"[{"base_host_virt_addr":0,"size":8192,"offset":0,"page_size_kib":4096}]"#;
        let m: Vec<GuestRegionMapping> = serde_json::from_str(json).unwrap();
        assert_eq!(validate(&m, 8192).unwrap()[0].page_size, 4096);
    }

    #[test]
    fn validation_rejects_each_bad_shape() {
        let cases: Vec<(Vec<GuestRegionMapping>, &str)> = vec![
            (vec![], "NoMappings"),
            (vec![mapping(0x1000, 0, 0, 4096)], "Empty"),
            (vec![mapping(0x1001, 4096, 0, 4096)], "Unaligned"),
            (vec![mapping(0x1000, 4096, 512, 4096)], "Unaligned"),
            (vec![mapping(0x1000, 4096, 0, 3000)], "PageSize"),
            (vec![mapping(0x1000, 4096, 0, 1024)], "PageSize"),
            (
                vec![
                    mapping(0x1000, 0x2000, 0, 4096),
                    mapping(0x2000, 0x1000, 0x2000, 4096),
                ],
                "Overlap",
            ),
            (vec![mapping(u64::MAX - 0xfff, 0x2000, 0, 4096)], "Overflow"),
            (
                vec![mapping(0x1000, 0x4000, 0x1000, 4096)],
                "MemoryFileTooShort",
            ),
        ];
        for (mappings, want) in cases {
            let err = validate(&mappings, 0x4000).unwrap_err();
            assert!(
                format!("{err:?}").contains(want),
                "{mappings:?}: got {err:?}, want {want}"
            );
        }
    }

    #[test]
    fn short_file_error_names_the_region_and_sizes() {
        let m = vec![
            mapping(0x10000, 0x2000, 0, 4096),
            mapping(0x20000, 0x2000, 0x2000, 4096),
        ];
        match validate(&m, 0x3000).unwrap_err() {
            PageServerError::MemoryFileTooShort {
                region,
                needed_bytes,
                file_bytes,
            } => assert_eq!((region, needed_bytes, file_bytes), (1, 0x4000, 0x3000)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn read_only_map_refuses_empty_and_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(ReadOnlyMap::new(&file, 0).unwrap_err(), Errno::INVAL);
        assert_eq!(ReadOnlyMap::new(&file, 8193).unwrap_err(), Errno::INVAL);
        let map = ReadOnlyMap::new(&file, 8192).unwrap();
        assert!(map.source(4096, 4096).is_some());
        assert!(map.source(4096, 4097).is_none());
        assert!(map.source(u64::MAX, 2).is_none());
    }
}
