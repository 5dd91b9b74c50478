//! nftables transactions in-process, through `libnftables`.
//!
//! Every firewall change is one call of `nft_run_cmd_from_buffer`: the
//! library parses the script, turns it into one netlink batch and the kernel
//! applies the batch atomically (all of it or none). Nothing is executed: no
//! `nft` process per VM, no shell.
//!
//! The library is loaded with `dlopen` when a [`Nftables`] is opened, not
//! linked, so firehost builds and runs without it and only networking needs
//! it; a host without it gets [`NftError::Missing`], which names the
//! package to install.
//!
//! Scripts are only ever assembled by [`super::firewall`] from typed values
//! (validated interface names, addresses, ports), never from raw input.
//!
//! # Network namespaces
//!
//! [`Nftables::open`] opens the library's netlink socket, in the network
//! namespace of the calling thread, and every command of that handle goes to
//! that namespace's tables whichever thread runs it later.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

/// The shared object loaded at runtime: Debian and Ubuntu ship it in
/// `libnftables1`, which the `nftables` package depends on.
pub const LIBRARY: &str = "libnftables.so.1";

/// `NFT_CTX_OUTPUT_JSON`: list commands print JSON.
const OUTPUT_JSON: c_uint = 1 << 4;

/// Why an nftables command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftError {
    /// `libnftables` could not be loaded.
    #[error(
        "nftables is not available: cannot load {LIBRARY} ({detail}); install the `nftables` package"
    )]
    Missing {
        /// What `dlopen` said.
        detail: String,
    },
    /// The library refused or the kernel rejected the transaction; nothing
    /// of it was applied.
    #[error("nftables transaction failed: {message}")]
    Rejected {
        /// What `libnftables` printed, trimmed.
        message: String,
    },
    /// A script held a NUL byte (a bug in the caller).
    #[error("nftables script holds a NUL byte")]
    Nul,
}

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type CtxSetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The functions firehost uses, resolved once.
struct Api {
    ctx_free: CtxFree,
    output_set_flags: CtxSetFlags,
    get_output_buffer: CtxGetBuffer,
    get_error_buffer: CtxGetBuffer,
    run_cmd_from_buffer: RunCmd,
    // Declared last: fields drop in order, and the function pointers above
    // point into the library.
    _library: libloading::Library,
}

/// One `libnftables` context with buffered output and errors.
struct Context {
    api: Api,
    ctx: *mut c_void,
}

// SAFETY: an nft_ctx has no thread affinity; it is only ever used by one
// thread at a time, under the mutex in `Nftables`.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from nft_ctx_new and is freed exactly once.
        unsafe { (self.api.ctx_free)(self.ctx) }
    }
}

/// A handle on `libnftables` that runs scripts as atomic transactions.
///
/// Cheap to share behind an `Arc`; commands from several tasks run one at a
/// time (a context is not thread safe). Each command is a short netlink
/// round trip and runs on the calling thread.
pub struct Nftables {
    context: Mutex<Context>,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables").finish_non_exhaustive()
    }
}

impl Nftables {
    /// Loads [`LIBRARY`] and makes a context.
    pub fn open() -> Result<Self, NftError> {
        Self::open_library(LIBRARY)
    }

    /// Loads `libnftables` from `library` (a name `dlopen` looks up, or a
    /// path) and makes a context.
    pub fn open_library(library: &str) -> Result<Self, NftError> {
        let missing = |detail: String| NftError::Missing { detail };
        // SAFETY: loading libnftables runs its initialisers, which only set
        // up the library's own state.
        let library =
            unsafe { libloading::Library::new(library) }.map_err(|e| missing(e.to_string()))?;
        // SAFETY: each symbol is declared in <nftables/libnftables.h> with
        // the signature of the type it is read as.
        let context = unsafe {
            let sym = |name: &[u8]| -> Result<*const c_void, NftError> {
                library
                    .get::<*const c_void>(name)
                    .map(|s| *s)
                    .map_err(|e| missing(e.to_string()))
            };
            let ctx_new: CtxNew = std::mem::transmute(sym(b"nft_ctx_new\0")?);
            let buffer_output: CtxInt = std::mem::transmute(sym(b"nft_ctx_buffer_output\0")?);
            let buffer_error: CtxInt = std::mem::transmute(sym(b"nft_ctx_buffer_error\0")?);
            let api = Api {
                ctx_free: std::mem::transmute::<*const c_void, CtxFree>(sym(b"nft_ctx_free\0")?),
                output_set_flags: std::mem::transmute::<*const c_void, CtxSetFlags>(sym(
                    b"nft_ctx_output_set_flags\0",
                )?),
                get_output_buffer: std::mem::transmute::<*const c_void, CtxGetBuffer>(sym(
                    b"nft_ctx_get_output_buffer\0",
                )?),
                get_error_buffer: std::mem::transmute::<*const c_void, CtxGetBuffer>(sym(
                    b"nft_ctx_get_error_buffer\0",
                )?),
                run_cmd_from_buffer: std::mem::transmute::<*const c_void, RunCmd>(sym(
                    b"nft_run_cmd_from_buffer\0",
                )?),
                _library: library,
            };
            // NFT_CTX_DEFAULT
            let ctx = ctx_new(0);
            if ctx.is_null() {
                return Err(missing("nft_ctx_new returned NULL".into()));
            }
            let context = Context { api, ctx };
            if buffer_output(ctx) != 0 || buffer_error(ctx) != 0 {
                return Err(missing("cannot buffer libnftables output".into()));
            }
            (context.api.output_set_flags)(ctx, OUTPUT_JSON);
            context
        };
        Ok(Nftables {
            context: Mutex::new(context),
        })
    }

    /// Runs `script` as one transaction and returns what it printed (JSON
    /// for list commands).
    pub fn run(&self, script: &str) -> Result<String, NftError> {
        let script = CString::new(script).map_err(|_| NftError::Nul)?;
        let context = self.context.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the context is valid while the guard lives; the script is
        // NUL-terminated; the buffers returned are owned by the context and
        // copied out before the next call.
        unsafe {
            let rc = (context.api.run_cmd_from_buffer)(context.ctx, script.as_ptr());
            let output = read_buffer((context.api.get_output_buffer)(context.ctx));
            let errors = read_buffer((context.api.get_error_buffer)(context.ctx));
            if rc != 0 {
                return Err(NftError::Rejected {
                    message: errors.trim().to_owned(),
                });
            }
            Ok(output)
        }
    }

    /// Runs a list command and parses its JSON output.
    pub fn list(&self, command: &str) -> Result<serde_json::Value, NftError> {
        let output = self.run(command)?;
        serde_json::from_str(&output).map_err(|e| NftError::Rejected {
            message: format!("unparseable JSON from `{command}`: {e}"),
        })
    }
}

/// Copies a buffer `libnftables` returned.
///
/// # Safety
///
/// `ptr` is null or a NUL-terminated string that stays valid during the call.
unsafe fn read_buffer(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: see the function's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
