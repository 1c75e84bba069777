//! Why an iTIP message was ignored or rejected: one exhaustive enum, worded for a human.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The calendar object carried no usable component.
    Empty,
    /// The object could not be read.
    Malformed(String),
    /// No UID on the component (RFC 5545 3.8.4.7).
    MissingUid,
    /// The method has no ORGANIZER to check against (RFC 5546 3.2).
    NoOrganizer(&'static str),
    /// The method needs an ATTENDEE and there is none.
    NoAttendee(&'static str),
    NotFromOrganizer {
        method: &'static str,
        organizer: String,
        proven: String,
    },
    NotFromAttendee {
        method: &'static str,
        attendee: String,
        proven: String,
    },
    OrganizerChanged {
        stored: String,
        incoming: String,
    },
    ComponentChanged {
        stored: String,
        incoming: String,
    },
    MethodNotForComponent {
        method: &'static str,
        component: String,
    },
    RecipientNotInvited(String),
    RecipientIsOrganizer,
    RecipientNotOrganizer(String),
    PartyCrasher(String),
    UnknownObject(String),
    /// ADD for an object we do not have: a REFRESH was sent instead (RFC 5546 3.2.4).
    AddForUnknown(String),
    UnknownInstance(String),
    /// The instance was cancelled by the organizer (a cancelled override or an EXDATE).
    CancelledInstance(String),
    NoMaster,
    OlderSequence {
        incoming: i64,
        stored: i64,
    },
    NotNewer {
        sequence: i64,
        incoming: Option<String>,
        stored: Option<String>,
    },
    StaleReply {
        attendee: String,
    },
    FreeBusyNotStored(&'static str),
    /// A recurrence rule that would make expansion balloon (DESIGN: expansion is capped).
    RecurrenceTooComplex(String),
    /// The same message was already processed for this recipient.
    Duplicate,
    /// Site policy refused it (sender, creation rules).
    Policy(String),
    /// The calendar sits where no iMIP message may (inside a bounce).
    NotImip(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => write!(f, "no calendar component to act on"),
            Reason::Malformed(s) => write!(f, "malformed calendar: {s}"),
            Reason::MissingUid => write!(f, "component has no UID"),
            Reason::NoOrganizer(m) => write!(f, "{m} without ORGANIZER cannot be attributed to anyone"),
            Reason::NoAttendee(m) => write!(f, "{m} names no ATTENDEE"),
            Reason::NotFromOrganizer { method, organizer, proven } => write!(
                f,
                "{method} must come from the organizer {organizer} (or its configured or recorded SENT-BY delegate); sender proven: {proven}"
            ),
            Reason::NotFromAttendee { method, attendee, proven } => write!(
                f,
                "{method} must come from the attendee {attendee} (or its configured or recorded SENT-BY delegate); sender proven: {proven}"
            ),
            Reason::OrganizerChanged { stored, incoming } => {
                write!(f, "ORGANIZER changed from {stored} to {incoming}")
            }
            Reason::ComponentChanged { stored, incoming } => {
                write!(f, "stored object is a {stored}, incoming is a {incoming}")
            }
            Reason::MethodNotForComponent { method, component } => {
                write!(f, "{method} is not defined for {component}")
            }
            Reason::RecipientNotInvited(r) => write!(f, "recipient {r} is not an attendee"),
            Reason::RecipientIsOrganizer => {
                write!(f, "recipient is the organizer of this object, not an attendee")
            }
            Reason::RecipientNotOrganizer(r) => {
                write!(f, "recipient {r} is not the organizer of the stored object")
            }
            Reason::PartyCrasher(a) => write!(f, "{a} is not an attendee of this object"),
            Reason::UnknownObject(uid) => write!(f, "no stored object with UID {uid}"),
            Reason::AddForUnknown(uid) => write!(
                f,
                "ADD for {uid}, which is not stored: REFRESH sent to the organizer"
            ),
            Reason::UnknownInstance(rid) => {
                write!(f, "{rid} is not an instance of the stored object")
            }
            Reason::CancelledInstance(rid) => {
                write!(f, "instance {rid} was cancelled by the organizer")
            }
            Reason::NoMaster => write!(f, "the stored object has no master component"),
            Reason::OlderSequence { incoming, stored } => write!(
                f,
                "older SEQUENCE {incoming} than the stored {stored}"
            ),
            Reason::NotNewer { sequence, incoming, stored } => write!(
                f,
                "same SEQUENCE {sequence} and DTSTAMP {} not newer than the stored {}",
                incoming.as_deref().unwrap_or("(none)"),
                stored.as_deref().unwrap_or("(none)")
            ),
            Reason::StaleReply { attendee } => write!(
                f,
                "a reply from {attendee} with the same or a newer DTSTAMP was already applied"
            ),
            Reason::FreeBusyNotStored(m) => write!(f, "VFREEBUSY {m} is not stored"),
            Reason::RecurrenceTooComplex(why) => {
                write!(f, "recurrence refused: {why}")
            }
            Reason::Duplicate => write!(f, "message already processed for this recipient"),
            Reason::Policy(s) => write!(f, "refused by policy: {s}"),
            Reason::NotImip(s) => write!(f, "not an iMIP message: {s}"),
        }
    }
}

impl Reason {
    /// Whether the object was refused because the proven sender is not the party allowed to
    /// send it (the milter's `on_forged` policy acts on these).
    pub fn is_authority(&self) -> bool {
        matches!(
            self,
            Reason::NotFromOrganizer { .. }
                | Reason::NotFromAttendee { .. }
                | Reason::PartyCrasher(_)
                | Reason::NoOrganizer(_)
        )
    }

    /// The kind of reason, whatever its details: rejections of one kind share a journal line.
    pub fn discriminant(&self) -> std::mem::Discriminant<Reason> {
        std::mem::discriminant(self)
    }
}
