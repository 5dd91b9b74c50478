//! One uid per live jailed VM, from a configured range.
//!
//! Two VMMs under one uid could signal, ptrace or read each other's files;
//! a uid each keeps a compromised VMM away from its neighbours. The
//! allocator is rebuilt from the records of live VMs when a manager opens.

use std::collections::BTreeMap;
use std::ops::Range;

use super::JailError;
use crate::VmId;

/// Hands out uids from a range, one per VM.
#[derive(Debug, Clone)]
pub struct UidAllocator {
    range: Range<u32>,
    share: bool,
    holders: BTreeMap<u32, Vec<VmId>>,
}

impl UidAllocator {
    /// An allocator over `range`. With `share`, an exhausted range is
    /// reused, the least-shared uid first, instead of refusing.
    pub fn new(range: Range<u32>, share: bool) -> UidAllocator {
        UidAllocator {
            range,
            share,
            holders: BTreeMap::new(),
        }
    }

    /// A uid for `vm`: `wanted` if given (refused while another VM holds it,
    /// unless sharing), else the lowest free one in the range.
    pub fn allocate(&mut self, vm: &VmId, wanted: Option<u32>) -> Result<u32, JailError> {
        let uid = match wanted {
            Some(uid) => {
                if let Some(holder) = self.holders.get(&uid).and_then(|h| h.first())
                    && !self.share
                {
                    return Err(JailError::UidTaken {
                        uid,
                        holder: holder.to_string(),
                    });
                }
                uid
            }
            None => self.pick()?,
        };
        self.hold(uid, vm);
        Ok(uid)
    }

    fn pick(&self) -> Result<u32, JailError> {
        if let Some(free) = self
            .range
            .clone()
            .find(|uid| !self.holders.contains_key(uid))
        {
            return Ok(free);
        }
        if self.share
            && let Some(least) = self
                .range
                .clone()
                .min_by_key(|uid| self.holders.get(uid).map_or(0, Vec::len))
        {
            return Ok(least);
        }
        Err(JailError::UidsExhausted {
            start: self.range.start,
            end: self.range.end,
        })
    }

    /// Records that `vm` holds `uid` (a live VM found on reopen).
    pub fn hold(&mut self, uid: u32, vm: &VmId) {
        let holders = self.holders.entry(uid).or_default();
        if !holders.contains(vm) {
            holders.push(vm.clone());
        }
    }

    /// The uid `vm` holds, if any.
    pub fn held_by(&self, vm: &VmId) -> Option<u32> {
        self.holders
            .iter()
            .find(|(_, holders)| holders.contains(vm))
            .map(|(uid, _)| *uid)
    }

    /// Frees whatever `vm` holds.
    pub fn release(&mut self, vm: &VmId) {
        self.holders.retain(|_, holders| {
            holders.retain(|h| h != vm);
            !holders.is_empty()
        });
    }

    /// The VMs holding `uid`.
    pub fn holders(&self, uid: u32) -> &[VmId] {
        self.holders.get(&uid).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> VmId {
        s.parse().unwrap()
    }

    #[test]
    fn uids_are_unique_until_released() {
        let mut uids = UidAllocator::new(100..102, false);
        assert_eq!(uids.allocate(&id("a"), None).unwrap(), 100);
        assert_eq!(uids.allocate(&id("b"), None).unwrap(), 101);
        let err = uids.allocate(&id("c"), None).unwrap_err();
        assert!(
            matches!(
                err,
                JailError::UidsExhausted {
                    start: 100,
                    end: 102
                }
            ),
            "{err:?}"
        );
        uids.release(&id("a"));
        assert_eq!(uids.allocate(&id("c"), None).unwrap(), 100);
        assert_eq!(uids.holders(100), [id("c")]);
    }

    #[test]
    fn a_wanted_uid_is_refused_while_held() {
        let mut uids = UidAllocator::new(100..110, false);
        uids.hold(5000, &id("old"));
        let err = uids.allocate(&id("new"), Some(5000)).unwrap_err();
        assert!(
            matches!(err, JailError::UidTaken { uid: 5000, .. }),
            "{err:?}"
        );
        // Outside the range is fine when free.
        assert_eq!(uids.allocate(&id("new"), Some(6000)).unwrap(), 6000);
    }

    #[test]
    fn sharing_spreads_vms_over_the_range() {
        let mut uids = UidAllocator::new(100..102, true);
        let got: Vec<u32> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| uids.allocate(&id(n), None).unwrap())
            .collect();
        assert_eq!(got, [100, 101, 100, 101]);
        assert_eq!(uids.holders(100).len(), 2);
    }
}
