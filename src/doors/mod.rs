//! The front doors. Each translates its protocol into a pipeline `Delivery` and the verdict
//! back into its protocol; none holds iTIP logic.

pub mod control;
pub mod ischedule;
pub mod lmtp;
pub mod maildir;
pub mod milter;
pub mod report;
