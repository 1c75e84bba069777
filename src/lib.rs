//! imipd: the calendar-scheduling gateway for mail systems (iMIP, iTIP, iSchedule).
//!
//! The pipeline: front doors ([`milter`], [`lmtp`], CLI) -> [`extract`] -> [`proof`] ->
//! [`itip`] (a pure engine) -> [`store`] -> effects ([`outbound`]).

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod extract;
pub mod ical;
pub mod ischedule;
pub mod itip;
pub mod lmtp;
pub mod maildir;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod outbound;
pub mod pipeline;
pub mod proof;
pub mod sanitize;
pub mod store;

/// Entry for `imipd run`.
pub fn daemon_entry(args: &cli::Args) -> Result<i32, cli::CliError> {
    daemon::run(args)
}
