//! `image build` and `image initramfs`: stage two and the library calls,
//! with a progress display.
//!
//! Neither command touches the state directory. Stage two turns the flags
//! into the library's [`RootfsOptions`] and [`InitramfsOptions`] (the
//! library checks the paths, so the CLI and the library refuse bad input
//! with the same error) and finds the agent when `--agent` is not given:
//! `firehost-agent` next to this program, else in `PATH`. The builds run
//! on the blocking pool.
//!
//! While an image is built, progress bars for the unpack and `mkfs.ext4`
//! phases go to stderr, only when stderr is a terminal and `--json` is
//! not given: scripts and logs see nothing but the result.

use std::cell::RefCell;
use std::io::IsTerminal;

use firehost::image::{
    AgentPlacement, InitramfsOptions, Progress, RootfsOptions, build_initramfs, build_rootfs,
    find_agent,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::{ImageArgs, ImageBuildArgs, ImageCommand, InitramfsArgs};
use crate::commands::{Out, blocking};
use crate::exit::CliError;
use crate::human;
use crate::json::{ImageJson, InitramfsJson};

/// Runs an `image` subcommand.
pub async fn run(args: ImageArgs, out: Out) -> Result<(), CliError> {
    match args.command {
        ImageCommand::Build(args) => build(args, out).await,
        ImageCommand::Initramfs(args) => initramfs(args, out).await,
    }
}

/// Stage two for `image build`.
fn rootfs_options(args: ImageBuildArgs) -> Result<RootfsOptions, CliError> {
    let agent = match args.agent {
        Some(agent) => agent,
        None => {
            let exe = std::env::current_exe().ok();
            find_agent(exe.as_deref().and_then(std::path::Path::parent))?
        }
    };
    Ok(RootfsOptions {
        placement: if args.agent_beside_init {
            AgentPlacement::BesideInit
        } else {
            AgentPlacement::AsInit
        },
        size_mib: args.size_mib,
        read_only: args.read_only,
        force: args.force,
        ..RootfsOptions::new(args.from, args.out, agent)
    })
}

async fn build(args: ImageBuildArgs, out: Out) -> Result<(), CliError> {
    let options = rootfs_options(args)?;
    let show = !out.is_json() && std::io::stderr().is_terminal();
    let report = blocking(move || {
        let bars = Bars::new(show);
        build_rootfs(&options, &|p| bars.update(p))
    })
    .await?;
    out.emit(&ImageJson::from(&report), human::image_built)
}

async fn initramfs(args: InitramfsArgs, out: Out) -> Result<(), CliError> {
    let options = InitramfsOptions {
        agent: args.agent,
        busybox: args.busybox,
        out: args.out,
        force: args.force,
    };
    let report = blocking(move || build_initramfs(&options)).await?;
    out.emit(&InitramfsJson::from(&report), human::initramfs_built)
}

/// Which phase a bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unpack,
    Mkfs,
}

/// One progress bar per phase, one at a time, on stderr; nothing when
/// disabled. Each bar is cleared when its phase ends, so the terminal is
/// left with the result only.
#[derive(Debug)]
struct Bars {
    enabled: bool,
    current: RefCell<Option<(Phase, ProgressBar)>>,
}

impl Bars {
    fn new(enabled: bool) -> Self {
        Bars {
            enabled,
            current: RefCell::new(None),
        }
    }

    fn update(&self, progress: Progress) {
        if !self.enabled {
            return;
        }
        match progress {
            Progress::Unpack {
                done_bytes,
                total_bytes,
            } => self.show(Phase::Unpack, done_bytes, total_bytes),
            Progress::Mkfs {
                done_bytes,
                total_bytes,
            } => self.show(Phase::Mkfs, done_bytes, total_bytes),
            _ => self.clear(),
        }
    }

    fn show(&self, phase: Phase, done: u64, total: u64) {
        let mut current = self.current.borrow_mut();
        if current.as_ref().map(|(p, _)| *p) != Some(phase) {
            if let Some((_, old)) = current.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let label = match phase {
                Phase::Unpack => "unpacking",
                Phase::Mkfs => "mkfs.ext4",
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:40}] {bytes}/{total_bytes} {elapsed}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix(label);
            *current = Some((phase, bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    fn clear(&self) {
        if let Some((_, bar)) = self.current.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn stage_two_maps_the_placement_flags() {
        let args = |beside: bool| ImageBuildArgs {
            from: "src".into(),
            out: "out.ext4".into(),
            size_mib: Some(100),
            agent: Some("agent".into()),
            agent_as_init: false,
            agent_beside_init: beside,
            read_only: true,
            force: false,
        };
        let options = rootfs_options(args(false)).unwrap();
        assert_eq!(options.placement, AgentPlacement::AsInit);
        assert_eq!(
            (options.size_mib, options.read_only, options.force),
            (Some(100), true, false)
        );
        assert_eq!(options.agent, PathBuf::from("agent"));
        let beside = rootfs_options(args(true)).unwrap();
        assert_eq!(beside.placement, AgentPlacement::BesideInit);
    }

    #[test]
    fn one_bar_per_phase_and_none_when_disabled() {
        let mkfs = Progress::Mkfs {
            done_bytes: 1,
            total_bytes: 2,
        };
        let phase = |bars: &Bars| bars.current.borrow().as_ref().map(|(p, _)| *p);
        let off = Bars::new(false);
        off.update(mkfs);
        assert_eq!(phase(&off), None);

        // Not a terminal under test: indicatif draws nothing, but the
        // bars are kept as on one.
        let on = Bars::new(true);
        on.update(Progress::Unpack {
            done_bytes: 5,
            total_bytes: 10,
        });
        assert_eq!(phase(&on), Some(Phase::Unpack));
        on.update(mkfs);
        assert_eq!(phase(&on), Some(Phase::Mkfs));
        on.update(Progress::Agent);
        assert_eq!(phase(&on), None);
    }
}
