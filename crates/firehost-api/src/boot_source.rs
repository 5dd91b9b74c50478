//! The guest kernel, initrd and command line: `PUT /boot-source`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to boot: body of `PUT /boot-source`.
///
/// # Examples
///
/// ```
/// use firehost_api::BootSource;
///
/// let boot = BootSource {
///     boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
///     ..BootSource::new("/srv/vmlinux")
/// };
/// let json = serde_json::to_value(&boot).unwrap();
/// assert_eq!(json["kernel_image_path"], "/srv/vmlinux");
/// assert!(json.get("initrd_path").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel command line. Firecracker supplies its own default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Host path of the uncompressed kernel image.
    pub kernel_image_path: PathBuf,
}

impl BootSource {
    /// Boots `kernel_image_path` with Firecracker's default command line and
    /// no initrd.
    pub fn new(kernel_image_path: impl Into<PathBuf>) -> Self {
        Self {
            boot_args: None,
            initrd_path: None,
            kernel_image_path: kernel_image_path.into(),
        }
    }
}
