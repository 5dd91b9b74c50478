//! Stage two for the device flags: `--drive id=ID,path=FILE[,ro]…`, the
//! `ID=RATE` and `ID=N` of `update`, and rates like `100MiB/s`.

use std::path::PathBuf;

use firehost::spec::{DriveCache, DriveIo, DriveSpec, IoEngine};
use firehost::vocab::{Bandwidth, BandwidthSyntaxError, Bucket, BucketChange};

/// Why a device flag's value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSyntaxError {
    /// A rate.
    #[error(transparent)]
    Rate(#[from] BandwidthSyntaxError),
    /// Anything else, with what was expected.
    #[error("{text:?}: {why}")]
    Syntax {
        /// The value, or the part of it at fault.
        text: String,
        /// What is wrong.
        why: String,
    },
}

fn syntax(text: &str, why: impl Into<String>) -> DeviceSyntaxError {
    DeviceSyntaxError::Syntax {
        text: text.to_owned(),
        why: why.into(),
    }
}

/// A bandwidth bucket from a rate, or its removal from `none`.
pub fn bandwidth_change(text: &str) -> Result<BucketChange, DeviceSyntaxError> {
    if text == "none" {
        return Ok(BucketChange::Remove);
    }
    let rate: Bandwidth = text.parse()?;
    Ok(BucketChange::Set(Bucket::per_second(
        rate.bytes_per_second(),
    )))
}

/// An operations bucket from a count a second, or its removal from `none`.
pub fn ops_change(text: &str) -> Result<BucketChange, DeviceSyntaxError> {
    if text == "none" {
        return Ok(BucketChange::Remove);
    }
    let n: u64 = text
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| syntax(text, "expected operations a second, 1 or more, or none"))?;
    Ok(BucketChange::Set(Bucket::per_second(n)))
}

/// `ID=VALUE`, the value parsed by `value`.
pub fn keyed<T>(
    text: &str,
    value: impl Fn(&str) -> Result<T, DeviceSyntaxError>,
) -> Result<(String, T), DeviceSyntaxError> {
    let (id, rest) = text
        .split_once('=')
        .filter(|(id, _)| !id.is_empty())
        .ok_or_else(|| syntax(text, "expected ID=VALUE"))?;
    Ok((id.to_owned(), value(rest)?))
}

/// `--drive id=ID,path=FILE[,ro][,shared][,cache=writeback][,engine=async]
/// [,bw=RATE][,iops=N]`.
///
/// The id and path are checked later, with the rest of the spec.
pub fn drive(text: &str) -> Result<DriveSpec, DeviceSyntaxError> {
    let (mut id, mut path) = (None, None);
    let (mut read_only, mut shared) = (false, false);
    let mut io = DriveIo::default();
    for part in text.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        let once = |slot: bool| {
            if slot {
                Err(syntax(part, format!("{key} is given twice")))
            } else {
                Ok(())
            }
        };
        match (key, value) {
            ("id", Some(v)) => {
                once(id.is_some())?;
                id = Some(v.to_owned());
            }
            ("path", Some(v)) if !v.is_empty() => {
                once(path.is_some())?;
                path = Some(PathBuf::from(v));
            }
            ("ro", None) => read_only = true,
            ("shared", None) => shared = true,
            ("cache", Some("unsafe")) => io.cache = DriveCache::Unsafe,
            ("cache", Some("writeback")) => io.cache = DriveCache::Writeback,
            ("engine", Some("sync")) => io.engine = IoEngine::Sync,
            ("engine", Some("async")) => io.engine = IoEngine::Async,
            ("bw", Some(v)) => {
                once(io.limit.bandwidth.is_some())?;
                let rate: Bandwidth = v.parse()?;
                io.limit.bandwidth = Some(Bucket::per_second(rate.bytes_per_second()));
            }
            ("iops", Some(v)) => {
                once(io.limit.ops.is_some())?;
                let BucketChange::Set(bucket) = ops_change(v)? else {
                    return Err(syntax(part, "iops must be a number"));
                };
                io.limit.ops = Some(bucket);
            }
            _ => {
                return Err(syntax(
                    part,
                    "expected id=ID, path=FILE, ro, shared, cache=unsafe|writeback, \
                     engine=sync|async, bw=RATE or iops=N",
                ));
            }
        }
    }
    let id = id.ok_or_else(|| syntax(text, "no id=ID"))?;
    let path = path.ok_or_else(|| syntax(text, "no path=FILE"))?;
    if read_only && shared {
        return Err(syntax(
            text,
            "a read-only drive cannot be shared for writing",
        ));
    }
    Ok(DriveSpec {
        shared,
        io,
        ..DriveSpec::new(id, path, read_only)
    })
}

/// `--pmem id=ID,path=FILE[,root][,bw=RATE][,iops=N]`.
pub fn pmem(text: &str) -> Result<firehost::spec::PmemSpec, DeviceSyntaxError> {
    let (mut id, mut path, mut root) = (None, None, false);
    let mut limit = firehost::vocab::RateLimit::default();
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if id.is_none() => id = Some(v.to_owned()),
            Some(("path", v)) if path.is_none() && !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("bw", v)) if limit.bandwidth.is_none() => {
                let rate: Bandwidth = v.parse()?;
                limit.bandwidth = Some(Bucket::per_second(rate.bytes_per_second()));
            }
            Some(("iops", v)) if limit.ops.is_none() => {
                let BucketChange::Set(bucket) = ops_change(v)? else {
                    return Err(syntax(part, "iops must be a number"));
                };
                limit.ops = Some(bucket);
            }
            None if part == "root" => root = true,
            _ => {
                return Err(syntax(
                    part,
                    "expected id=ID, path=FILE, root, bw=RATE or iops=N, each once",
                ));
            }
        }
    }
    Ok(firehost::spec::PmemSpec {
        id: id.ok_or_else(|| syntax(text, "no id=ID"))?,
        path: path.ok_or_else(|| syntax(text, "no path=FILE"))?,
        read_only: true,
        root,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drive_flag_sets_every_option() {
        let d =
            drive("id=data,path=/srv/d.img,ro,cache=writeback,engine=async,bw=10MiB/s,iops=500")
                .unwrap();
        assert_eq!(
            (d.id.as_str(), d.read_only, d.shared),
            ("data", true, false)
        );
        assert_eq!(d.path, PathBuf::from("/srv/d.img"));
        assert_eq!(d.io.cache, DriveCache::Writeback);
        assert_eq!(d.io.engine, IoEngine::Async);
        assert_eq!(d.io.limit.bandwidth, Some(Bucket::per_second(10 << 20)));
        assert_eq!(d.io.limit.ops, Some(Bucket::per_second(500)));
        let plain = drive("path=/a,id=x").unwrap();
        assert_eq!(plain.io, DriveIo::default());
        assert!(!plain.read_only);
    }

    #[test]
    fn bad_drive_flags_are_refused() {
        for text in [
            "",
            "id=x",
            "path=/a",
            "id=x,path=",
            "id=x,path=/a,rw",
            "id=x,path=/a,ro=1",
            "id=x,id=y,path=/a",
            "id=x,path=/a,bw=10MiB",
            "id=x,path=/a,iops=0",
            "id=x,path=/a,iops=none",
            "id=x,path=/a,cache=none",
            "id=x,path=/a,ro,shared",
            "id=x,path=/a,bw=1MiB/s,bw=2MiB/s",
        ] {
            assert!(drive(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn a_pmem_flag_sets_its_options_and_refuses_the_rest() {
        let p = pmem("id=root_img,path=/srv/r.img,root,bw=1GiB/s").unwrap();
        assert_eq!(
            (p.id.as_str(), p.root, p.read_only),
            ("root_img", true, true)
        );
        assert_eq!(p.limit.bandwidth, Some(Bucket::per_second(1 << 30)));
        for bad in [
            "id=a",
            "path=/x",
            "id=a,path=/x,rw",
            "id=a,id=b,path=/x",
            "id=a,path=/x,iops=0",
        ] {
            assert!(pmem(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_values_set_or_remove_a_bucket() {
        assert_eq!(
            keyed("rootfs=100MiB/s", bandwidth_change).unwrap(),
            (
                "rootfs".to_owned(),
                BucketChange::Set(Bucket::per_second(100 << 20))
            )
        );
        assert_eq!(
            keyed("data=none", ops_change).unwrap().1,
            BucketChange::Remove
        );
        for text in ["rootfs", "=1MiB/s", "x=1MiB", "x=0"] {
            assert!(
                keyed(text, bandwidth_change).is_err() || keyed(text, ops_change).is_err(),
                "{text}"
            );
        }
        assert!(keyed("x=0", ops_change).is_err());
        assert!(keyed("x=fast", bandwidth_change).is_err());
    }
}
