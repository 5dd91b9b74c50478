//! The host settings a state directory's VMs depend on, recorded in it.
//!
//! A VM's network lives on the bridge, subnet and firewall of the manager
//! that made it, and a jailed VM in the chroot base, uid range and cgroup
//! version of that manager. A later manager (a later CLI command, a
//! restarted service) with other values would rewrite the network under
//! the running VMs or lose track of their jails. So the first manager that
//! opens a state directory records these settings in `settings.json`, and
//! every later one must agree ([`SettingsPolicy::Require`]), take them
//! ([`SettingsPolicy::Adopt`]), or change them explicitly
//! ([`SettingsPolicy::Change`]), which is refused while a live VM depends
//! on a setting that changes.
//!
//! The jail settings are recorded the first time a manager with a
//! [`JailConfig`] opens the directory; a later manager without one leaves
//! them as they are.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{ManagerConfig, SettingsPolicy};
use crate::fsutil::{Durability, write_atomic};
use crate::jail::JailConfig;
use crate::jail::cgroup::CgroupVersion;
use crate::net::IfName;
use crate::net::firewall::HostService;
use crate::net::host::{NetworkConfig, Uplink};
use crate::net::ipam::Subnet;

/// The settings file, beside `vms/` and `snapshots/`.
pub const SETTINGS_FILE: &str = "settings.json";
/// The settings format this build writes (and the newest it reads).
pub const SETTINGS_FORMAT: u32 = 1;

/// The recorded host settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSettings {
    /// Format version.
    pub format: u32,
    /// The default network's settings.
    pub network: NetworkSettings,
    /// The jail settings, once a manager with jails used the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailSettings>,
}

/// The parts of [`NetworkConfig`] that running VMs depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// [`NetworkConfig::bridge`].
    pub bridge: IfName,
    /// [`NetworkConfig::subnet`].
    pub subnet: Subnet,
    /// [`NetworkConfig::gateway`].
    pub gateway: Option<Ipv4Addr>,
    /// [`NetworkConfig::uplink`]: `auto`, `none` or an interface name.
    pub uplink: String,
    /// [`NetworkConfig::dns`].
    pub dns: Option<Vec<Ipv4Addr>>,
    /// [`NetworkConfig::host_services`].
    pub host_services: Vec<HostService>,
}

/// The parts of [`JailConfig`] that jailed VMs depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSettings {
    /// [`JailConfig::chroot_base`].
    pub chroot_base: PathBuf,
    /// [`JailConfig::uid_range`], start and end (exclusive).
    pub uid_range: [u32; 2],
    /// [`JailConfig::cgroup_version`]; `None` picks per host.
    pub cgroup_version: Option<CgroupVersion>,
}

/// Which group of settings a difference is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingGroup {
    /// Networked VMs depend on it.
    Network,
    /// Jailed VMs depend on it.
    Jail,
}

/// One setting whose requested value differs from the recorded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDifference {
    /// The setting, spelled as the CLI option that sets it (`subnet`).
    pub setting: &'static str,
    /// Its group.
    pub group: SettingGroup,
    /// The recorded value.
    pub recorded: String,
    /// The requested value.
    pub requested: String,
}

impl std::fmt::Display for SettingDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} here, not {}",
            self.setting, self.recorded, self.requested
        )
    }
}

/// The settings file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Reading or writing it failed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// It is not a settings file this build can read: firehost refuses to
    /// guess the settings its VMs run with.
    #[error("{path:?} is malformed; fix or remove it (it records the settings VMs run with)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// It was written by a newer firehost.
    #[error("{path:?} has format {found}; this build reads up to {SETTINGS_FORMAT}")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// A recorded value does not parse as its type.
    #[error("{path:?} records an invalid {setting}: {value:?}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The setting.
        setting: &'static str,
        /// The value.
        value: String,
    },
}

impl HostSettings {
    /// The settings of `config`.
    pub fn of(config: &ManagerConfig) -> HostSettings {
        HostSettings {
            format: SETTINGS_FORMAT,
            network: NetworkSettings::of(&config.network),
            jail: config.jail.as_ref().map(JailSettings::of),
        }
    }

    /// Reads the settings recorded in `state_dir`, if any (blocking).
    pub fn read(state_dir: &Path) -> Result<Option<HostSettings>, SettingsError> {
        let path = state_dir.join(SETTINGS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SettingsError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        if let Ok(f) = serde_json::from_slice::<Format>(&bytes)
            && f.format > SETTINGS_FORMAT
        {
            return Err(SettingsError::NewerFormat {
                path,
                found: f.format,
            });
        }
        let settings: HostSettings =
            serde_json::from_slice(&bytes).map_err(|source| SettingsError::Malformed {
                path: path.clone(),
                source,
            })?;
        let uplink = &settings.network.uplink;
        if !matches!(uplink.as_str(), "auto" | "none") && IfName::new(uplink.as_str()).is_err() {
            return Err(SettingsError::InvalidValue {
                path,
                setting: "uplink",
                value: uplink.clone(),
            });
        }
        Ok(Some(settings))
    }

    /// Records the settings in `state_dir`, atomically and durably
    /// (blocking).
    pub fn write(&self, state_dir: &Path) -> Result<(), SettingsError> {
        let path = state_dir.join(SETTINGS_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| SettingsError::Io {
            op: "serialise",
            path: path.clone(),
            source: source.into(),
        })?;
        write_atomic(&path, &bytes, Durability::Synced).map_err(|e| SettingsError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }

    /// Puts these settings into `config` (its other fields unchanged). The
    /// jail settings go into `config.jail` only where it has one.
    pub fn apply_to(&self, config: &mut ManagerConfig) {
        let net = &self.network;
        config.network.bridge = net.bridge.clone();
        config.network.subnet = net.subnet;
        config.network.gateway = net.gateway;
        config.network.uplink = match net.uplink.as_str() {
            "auto" => Uplink::Auto,
            "none" => Uplink::None,
            name => IfName::new(name)
                .map(Uplink::Interface)
                .unwrap_or(Uplink::None),
        };
        config.network.dns = net.dns.clone();
        config.network.host_services = net.host_services.clone();
        if let (Some(jail), Some(recorded)) = (config.jail.as_mut(), &self.jail) {
            jail.chroot_base = recorded.chroot_base.clone();
            jail.uid_range = recorded.uid_range[0]..recorded.uid_range[1];
            jail.cgroup_version = recorded.cgroup_version;
        }
    }

    /// The settings in `requested` that differ from these, in a fixed
    /// order. A jail group missing on either side differs in nothing (a
    /// manager without jails changes no jail setting).
    pub fn differences(&self, requested: &HostSettings) -> Vec<SettingDifference> {
        let mut out = Vec::new();
        let mut differ = |setting, group, recorded: String, requested: String| {
            if recorded != requested {
                out.push(SettingDifference {
                    setting,
                    group,
                    recorded,
                    requested,
                });
            }
        };
        let (a, b) = (&self.network, &requested.network);
        let net = SettingGroup::Network;
        differ("bridge", net, a.bridge.to_string(), b.bridge.to_string());
        differ("subnet", net, a.subnet.to_string(), b.subnet.to_string());
        differ("gateway", net, show_opt(&a.gateway), show_opt(&b.gateway));
        differ("uplink", net, a.uplink.clone(), b.uplink.clone());
        differ("dns", net, show_dns(&a.dns), show_dns(&b.dns));
        differ(
            "host-service",
            net,
            show_list(&a.host_services),
            show_list(&b.host_services),
        );
        if let (Some(a), Some(b)) = (&self.jail, &requested.jail) {
            let jail = SettingGroup::Jail;
            differ(
                "chroot-base",
                jail,
                a.chroot_base.display().to_string(),
                b.chroot_base.display().to_string(),
            );
            differ(
                "jail-uids",
                jail,
                format!("{}-{}", a.uid_range[0], a.uid_range[1]),
                format!("{}-{}", b.uid_range[0], b.uid_range[1]),
            );
            differ(
                "cgroup-version",
                jail,
                show_version(a.cgroup_version),
                show_version(b.cgroup_version),
            );
        }
        out
    }

    /// What to record after a manager with `requested` settings opened
    /// under `policy`: `None` when the file stays as it is.
    pub(super) fn merged(
        recorded: Option<&HostSettings>,
        requested: &HostSettings,
        policy: SettingsPolicy,
    ) -> Option<HostSettings> {
        let Some(recorded) = recorded else {
            return Some(requested.clone());
        };
        let mut next = recorded.clone();
        if policy == SettingsPolicy::Change {
            next.network = requested.network.clone();
            if requested.jail.is_some() {
                next.jail = requested.jail.clone();
            }
        } else if next.jail.is_none() && requested.jail.is_some() {
            // Jails' first use.
            next.jail = requested.jail.clone();
        }
        (next != *recorded).then_some(next)
    }
}

impl NetworkSettings {
    fn of(config: &NetworkConfig) -> NetworkSettings {
        NetworkSettings {
            bridge: config.bridge.clone(),
            subnet: config.subnet,
            gateway: config.gateway,
            uplink: match &config.uplink {
                Uplink::Auto => "auto".into(),
                Uplink::None => "none".into(),
                Uplink::Interface(name) => name.to_string(),
            },
            dns: config.dns.clone(),
            host_services: config.host_services.clone(),
        }
    }
}

impl JailSettings {
    fn of(config: &JailConfig) -> JailSettings {
        JailSettings {
            chroot_base: config.chroot_base.clone(),
            uid_range: [config.uid_range.start, config.uid_range.end],
            cgroup_version: config.cgroup_version,
        }
    }
}

fn show_opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "unset".to_owned(), ToString::to_string)
}

fn show_dns(dns: &Option<Vec<Ipv4Addr>>) -> String {
    dns.as_ref()
        .map_or_else(|| "the host's".to_owned(), |d| show_list(d))
}

fn show_list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn show_version(version: Option<CgroupVersion>) -> String {
    version.map_or_else(|| "auto".to_owned(), |v| v.as_arg().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ManagerConfig {
        ManagerConfig::new("/tmp/x", "firecracker")
    }

    #[test]
    fn settings_round_trip_through_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostSettings::read(dir.path()).unwrap(), None);
        let mut config = config();
        config.network.subnet = "10.9.0.0/16".parse().unwrap();
        config.network.host_services = vec!["53/udp".parse().unwrap()];
        config.jail = Some(JailConfig::default());
        let settings = HostSettings::of(&config);
        settings.write(dir.path()).unwrap();
        assert_eq!(
            HostSettings::read(dir.path()).unwrap(),
            Some(settings.clone())
        );

        // Applied to a default config, they give the same settings back.
        let mut other = self::config();
        other.jail = Some(JailConfig::default());
        settings.apply_to(&mut other);
        assert_eq!(HostSettings::of(&other), settings);
    }

    #[test]
    fn differences_name_the_setting_and_both_values() {
        let recorded = HostSettings::of(&config());
        let mut requested = config();
        requested.network.subnet = "10.9.0.0/16".parse().unwrap();
        let diffs = recorded.differences(&HostSettings::of(&requested));
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].setting, "subnet");
        assert_eq!(diffs[0].group, SettingGroup::Network);
        assert_eq!(
            diffs[0].to_string(),
            "subnet is 172.30.0.0/16 here, not 10.9.0.0/16"
        );
        assert!(recorded.differences(&recorded).is_empty());
    }

    #[test]
    fn a_manager_without_jails_differs_in_no_jail_setting() {
        let mut with_jail = config();
        with_jail.jail = Some(JailConfig::default());
        let recorded = HostSettings::of(&with_jail);
        assert!(
            recorded
                .differences(&HostSettings::of(&config()))
                .is_empty()
        );
        // And leaves the recorded ones alone.
        assert_eq!(
            HostSettings::merged(
                Some(&recorded),
                &HostSettings::of(&config()),
                SettingsPolicy::Require
            ),
            None
        );
    }

    #[test]
    fn jail_settings_are_recorded_on_first_use() {
        let recorded = HostSettings::of(&config());
        let mut with_jail = config();
        with_jail.jail = Some(JailConfig::default());
        let requested = HostSettings::of(&with_jail);
        let next = HostSettings::merged(Some(&recorded), &requested, SettingsPolicy::Require);
        assert_eq!(next, Some(requested));
    }

    #[test]
    fn unreadable_and_newer_settings_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SETTINGS_FILE), b"{torn").unwrap();
        assert!(matches!(
            HostSettings::read(dir.path()),
            Err(SettingsError::Malformed { .. })
        ));
        std::fs::write(dir.path().join(SETTINGS_FILE), br#"{"format": 7}"#).unwrap();
        assert!(matches!(
            HostSettings::read(dir.path()),
            Err(SettingsError::NewerFormat { found: 7, .. })
        ));
        // Well-formed JSON, but an uplink no interface can be named.
        let mut bad = serde_json::to_value(HostSettings::of(&config())).unwrap();
        bad["network"]["uplink"] = "not an interface!".into();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            HostSettings::read(dir.path()),
            Err(SettingsError::InvalidValue {
                setting: "uplink",
                ..
            })
        ));
    }
}
