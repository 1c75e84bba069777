//! imipd: the calendar-scheduling gateway for mail systems (iMIP, iTIP, iSchedule).
//!
//! One pipeline, several front doors, one store:
//! - [`doors`]: milter, LMTP (with its Maildir/LMTP hand-on), the iSchedule receiver and the
//!   control socket; each only translates its protocol;
//! - [`pipeline`]: the one entry point: parse once, prove ([`imipd_auth`]), extract, decide
//!   ([`imipd_core::itip`], a pure engine), commit;
//! - [`store`]: the backends of [`imipd_core::store::Store`];
//! - [`effects`]: what a commit leaves to be done (iMIP mail, iSchedule relays);
//! - [`plugins`]: the plugin crates linked in, by `[plugins.NAME]` (trait: [`imipd_core::plugin`]);
//! - [`app`]: the daemon that wires them; [`cli`] and [`config`] the contracts.

pub mod app;
pub mod cli;
pub mod config;
pub mod doors;
pub mod effects;
pub mod ischedule;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod store;

// The crates of the workspace, and the places modules had before it (tests, fuzz targets and
// benches use both).
pub use doors::{control, lmtp, maildir, milter};
pub use effects::imip as outbound;
pub use imipd_auth as auth;
pub use imipd_auth::{message, proof};
pub use imipd_core::{addr, codec, ical, itip, sanitize};
pub use pipeline::extract;

/// Entry for `imipd run`.
pub fn daemon_entry(args: &cli::Args) -> Result<i32, cli::CliError> {
    app::run(args)
}
