//! Deletion orders: the broker orders a party to delete a case's data (the case retention
//! ended, or the case was handed over). The agent deletes the case from its inbox, outbox
//! and mirror, keeps a signed [`DeletionConfirmation`] until the broker took it, and lists
//! the order in the API so the partner system deletes its own copies too.

use chrono::{DateTime, Utc};
use ketenpost_audit::{AuditEntry, AuditEvent};
use ketenpost_schemas::control::{
    DeletionConfirmation, DeletionOrder, DeletionReason, SignedRecord,
};
use ketenpost_schemas::ids::{CaseRef, Oin};
use ketenpost_schemas::keys::SigningKey;
use ketenpost_schemas::protocol::Rejection;
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::Error;

/// A deletion order and what the agent did about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionEntry {
    /// The order id.
    pub order_id: uuid::Uuid,
    /// The case.
    pub case_ref: CaseRef,
    /// Why the broker ordered it.
    pub reason: DeletionReason,
    /// When the broker issued it.
    pub issued_at: DateTime<Utc>,
    /// The latest moment the deletion must be done.
    pub delete_by: DateTime<Utc>,
    /// When the agent deleted the case's data.
    pub deleted_at: DateTime<Utc>,
    /// How many messages (inbox and outbox) it deleted.
    pub deleted_messages: u64,
    /// The signed confirmation, as sent.
    pub confirmation: SignedRecord,
    /// When the broker recorded the confirmation.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// The broker's refusal of the confirmation, if it refused.
    pub confirmation_refused: Option<Rejection>,
    /// When the partner system said it deleted its own copies.
    pub acknowledged_at: Option<DateTime<Utc>>,
}

impl DeletionEntry {
    /// Whether the confirmation still has to reach the broker.
    pub fn confirmation_pending(&self) -> bool {
        self.confirmed_at.is_none() && self.confirmation_refused.is_none()
    }
}

/// Build the signed confirmation for an order carried out.
pub fn confirm(
    order: &DeletionOrder,
    me: &Oin,
    key: &SigningKey,
    deleted_messages: u64,
    now: DateTime<Utc>,
) -> Result<DeletionEntry, Error> {
    let confirmation = DeletionConfirmation {
        order_id: order.order_id,
        case_ref: order.case_ref.clone(),
        party: me.clone(),
        deleted_messages,
        deleted_at: now,
    };
    Ok(DeletionEntry {
        order_id: order.order_id,
        case_ref: order.case_ref.clone(),
        reason: order.reason,
        issued_at: order.issued_at,
        delete_by: order.delete_by,
        deleted_at: now,
        deleted_messages,
        confirmation: SignedRecord::sign(&confirmation, me.clone(), key)?,
        confirmed_at: None,
        confirmation_refused: None,
        acknowledged_at: None,
    })
}

impl Store {
    /// A deletion order the agent carried out.
    pub fn deletion(&self, order_id: &uuid::Uuid) -> Result<Option<DeletionEntry>, Error> {
        Store::get(&self.deletions, "deletion order", order_id.as_bytes())
    }

    /// Every deletion order carried out, oldest first.
    pub fn deletions(&self) -> Result<Vec<DeletionEntry>, Error> {
        Store::all(&self.deletions, "deletion order")
    }

    /// Carry out an order: delete the case's data and store the entry, in one locked step,
    /// then flush before the confirmation goes out. `make` builds the entry from the count.
    pub async fn carry_out(
        &self,
        order: &DeletionOrder,
        make: impl FnOnce(u64) -> Result<DeletionEntry, Error>,
    ) -> Result<DeletionEntry, Error> {
        let deleted = self.delete_case(&order.case_ref)?;
        let entry = make(deleted)?;
        Store::put(&self.deletions, order.order_id.as_bytes(), &entry)?;
        // The order id stands where the broker's own record of the confirmation puts it.
        self.audit(
            AuditEntry::ok(AuditEvent::DeletionConfirmed)
                .actor(&order.party)
                .case_ref(&order.case_ref)
                .message_id(order.order_id),
            entry.deleted_at,
        );
        self.flush().await?;
        Ok(entry)
    }

    /// Change a deletion entry under the write lock.
    pub fn deletion_update(
        &self,
        order_id: &uuid::Uuid,
        f: impl FnOnce(&mut DeletionEntry),
    ) -> Result<Option<DeletionEntry>, Error> {
        let _guard = self.lock();
        let key = order_id.as_bytes();
        let Some(mut e) = Store::get::<DeletionEntry>(&self.deletions, "deletion order", key)?
        else {
            return Ok(None);
        };
        f(&mut e);
        Store::put(&self.deletions, key, &e)?;
        Ok(Some(e))
    }
}
