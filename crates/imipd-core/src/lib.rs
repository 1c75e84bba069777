//! imipd's core, with no I/O of its own: calendar-user addresses ([`addr`]), the lossless
//! iCalendar tree ([`ical`]), the pure iTIP engine ([`itip`]), and the seams the daemon and its
//! plugins meet at: the [`store::Store`] trait, [`plugin::Plugin`] and [`effects`].

pub mod addr;
pub mod clock;
pub mod codec;
pub mod effects;
pub mod headers;
pub mod ical;
pub mod itip;
pub mod plugin;
pub mod sanitize;
pub mod store;
