//! What a commit leaves to be done: iMIP mail ([`imip`]) and iSchedule relays.

pub mod imip;
