//! imipd: the calendar-scheduling gateway for mail systems (iMIP, iTIP, iSchedule).
//!
//! The pipeline: front doors (milter, LMTP, iSchedule, CLI) -> [`extract`] -> authenticate ->
//! [`itip`] (a pure engine) -> [`store`] -> effects ([`outbound`]).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod extract;
pub mod ical;
pub mod itip;
pub mod outbound;
pub mod pipeline;
pub mod store;

/// Entry for `imipd run`.
pub fn daemon_entry(args: &cli::Args) -> Result<i32, cli::CliError> {
    daemon::run(args)
}
