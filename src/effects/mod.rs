//! What a commit leaves to be done: iMIP mail ([`imip`]), iSchedule relays ([`relay`]) and
//! plugin work, carried out by the effects [`runner`].

pub mod imip;
pub mod relay;
pub mod runner;
