//! The registries: cases, consents and deletion orders, and the core's [`Registry`] view of them.

use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};

use super::codec::{json, key2, parse};
use super::{DeletionState, Store, StoreError};
use ketenpost_core::registry::{Case, Consent, Lookup, Registry, Unknown};

impl Store {
    /// Store a case outside any transition: for tools and tests working on a stopped
    /// broker's data. The running broker changes cases only through
    /// [`Store::transition`].
    pub fn put_case(&self, case: &Case) -> Result<(), StoreError> {
        self.cases.insert(case.case_ref.as_str(), json(case))?;
        self.registry_cache.cases.invalidate();
        Ok(())
    }

    /// A case by reference; an error when it cannot be read or does not parse.
    pub fn get_case(&self, case_ref: &CaseRef) -> Result<Option<Case>, StoreError> {
        self.registry_cache.cases.get(case_ref, || {
            self.cases
                .get(case_ref.as_str())?
                .map(|v| parse(&v, "case"))
                .transpose()
        })
    }

    /// A consent by id; an error when it cannot be read or does not parse.
    pub fn get_consent(&self, id: &uuid::Uuid) -> Result<Option<Consent>, StoreError> {
        self.registry_cache.consents.get(id, || {
            self.consents
                .get(id.as_bytes())?
                .map(|v| parse(&v, "consent"))
                .transpose()
        })
    }

    /// Every case.
    pub fn cases(&self) -> Result<Vec<Case>, StoreError> {
        self.cases
            .iter()
            .map(|r| {
                let (_, v) = r?;
                parse(&v, "case")
            })
            .collect()
    }

    /// A deletion order for a party.
    pub fn deletion(
        &self,
        order: &uuid::Uuid,
        party: &Oin,
    ) -> Result<Option<DeletionState>, StoreError> {
        self.deletions
            .get(key2(order.as_bytes(), party.as_str().as_bytes()))?
            .map(|v| parse(&v, "deletion order"))
            .transpose()
    }

    /// Every deletion order.
    pub fn deletions(&self) -> Result<Vec<DeletionState>, StoreError> {
        self.deletions
            .iter()
            .map(|r| {
                let (_, v) = r?;
                parse(&v, "deletion order")
            })
            .collect()
    }
}

impl Registry for Store {
    fn case(&self, case_ref: &CaseRef) -> Lookup<Case> {
        self.get_case(case_ref).map_err(unknown)
    }

    fn consent(&self, id: &uuid::Uuid) -> Lookup<Consent> {
        self.get_consent(id).map_err(unknown)
    }

    fn seen(&self, id: &MessageId) -> Result<bool, Unknown> {
        // Held or settled: every id ever accepted has its key in `meta`.
        self.meta
            .contains_key(id.0.as_bytes())
            .map_err(|e| unknown(e.into()))
    }
}

/// A store error as the registry's "cannot tell", logged here with its cause (the check
/// answers `storage` without one).
pub(super) fn unknown(e: StoreError) -> Unknown {
    tracing::error!(cause = %e, "cannot read the registry");
    Unknown(e.to_string())
}
