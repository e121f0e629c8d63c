//! What a decision changes: [`Effects`], applied by a store in one transaction.
//!
//! A decision ([`crate::transitions`], [`crate::checks`]) never writes anything itself. It
//! returns every change it implies: records to write and remove ([`Write`]), notices for
//! parties ([`Notice`]), the audit entries that record it, the message bodies to destroy
//! and the parties to wake. A store applies all of it in one transaction, audit records
//! included, makes that transaction durable, and only then destroys the bodies and wakes
//! the parties. A crash at any point leaves either nothing of the decision or all of it
//! (plus, at most, bodies that are no longer referenced, which the next start destroys).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use ketenpost_schemas::control::{
    CaseChange, DeadlineNotice, DeletionOrder, ExpiryNotice, Record, SignedRecord,
};
use ketenpost_schemas::ids::{MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use serde::{Deserialize, Serialize};

use crate::deadlines::AnswerClock;
use crate::message::{BodyAt, MessageMeta};
use crate::registry::{Case, Consent};
use ketenpost_audit::AuditEntry;

/// A deletion order and whether it was confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionState {
    /// The order.
    pub order: DeletionOrder,
    /// When the party confirmed it.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When the broker recorded that the order was past its `delete_by` unconfirmed (once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_at: Option<DateTime<Utc>>,
}

/// One record to write or remove.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Write a message's metadata (new or changed).
    Meta(MessageMeta),
    /// Remove a message's metadata and its expiry entry: the broker no longer holds it.
    RemoveMeta {
        /// The message.
        id: MessageId,
        /// When it would have expired (the key of its expiry entry).
        expires_at: DateTime<Utc>,
    },
    /// Remove one recipient's queue entry.
    RemoveQueued {
        /// The recipient.
        party: Oin,
        /// The entry's sequence number.
        seq: u64,
    },
    /// Write a case.
    Case(Case),
    /// Write a consent.
    Consent(Consent),
    /// Write a deletion order's state.
    Deletion(DeletionState),
    /// Write an answer clock.
    Clock(AnswerClock),
    /// Forget an answer clock.
    RemoveClock(MessageId),
}

/// A record the broker queues for a party: forwarded as it is, or signed by the broker.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A party's own signed record (a delivery receipt), forwarded unchanged.
    Forward(SignedRecord),
    /// An undelivered message expired.
    Expiry(ExpiryNotice),
    /// An answer is overdue.
    Deadline(DeadlineNotice),
    /// Delete a case's data.
    DeletionOrder(DeletionOrder),
    /// A change the broker made to a case itself (closed by its phase's `close_after`), or
    /// its notice that a case is due for review: a case change signed by the broker.
    Case(CaseChange),
}

impl Notice {
    /// The kind of record it becomes.
    pub fn kind(&self) -> Kind {
        match self {
            Notice::Forward(r) => r.kind,
            Notice::Expiry(_) => ExpiryNotice::KIND,
            Notice::Deadline(_) => DeadlineNotice::KIND,
            Notice::DeletionOrder(_) => DeletionOrder::KIND,
            Notice::Case(_) => CaseChange::KIND,
        }
    }
}

/// A body to destroy once the transaction that stopped referencing it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destroy {
    /// The message.
    pub id: MessageId,
    /// Where its body is.
    pub at: BodyAt,
}

/// Everything one decision changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Records to write or remove, in order.
    pub writes: Vec<Write>,
    /// Notices to queue, each for one party.
    pub notices: Vec<(Oin, Notice)>,
    /// The audit entries that record the decision.
    pub audit: Vec<AuditEntry>,
    /// Bodies to destroy after the commit is durable.
    pub destroy: Vec<Destroy>,
    /// Parties to wake (their long polls) after the commit.
    pub wake: BTreeSet<Oin>,
}

impl Effects {
    /// Whether the decision changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.notices.is_empty()
            && self.audit.is_empty()
            && self.destroy.is_empty()
    }

    /// Add another decision's effects after these.
    pub fn extend(&mut self, other: Effects) {
        self.writes.extend(other.writes);
        self.notices.extend(other.notices);
        self.audit.extend(other.audit);
        self.destroy.extend(other.destroy);
        self.wake.extend(other.wake);
    }

    /// Queue `notice` for `party` and wake it.
    pub fn notify(&mut self, party: &Oin, notice: Notice) {
        self.notices.push((party.clone(), notice));
        self.wake.insert(party.clone());
    }
}
