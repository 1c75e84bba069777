//! The iSchedule receiver: HTTPS server and the checks and translation of one request.

pub mod receive;
pub mod server;
