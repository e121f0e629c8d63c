//! The federation's signed documents: the covenant policy and the partner directory.
//!
//! The agent fetches them from the broker, but trusts them only after checking their
//! signatures against the federation key pinned in its configuration: a broker that
//! served a directory with a swapped encryption key would otherwise read every message.
//! A directory must also never go back to a lower serial than one already accepted
//! (replay of an old directory, e.g. one listing a since-revoked key).

use std::path::PathBuf;

use ketenpost_schemas::directory::{self, Directory};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys::{self, VerifyingKey};
use ketenpost_schemas::policy::{Policy, Role};
use ketenpost_schemas::protocol::Documents;

use crate::Error;

/// Documents whose federation signatures verified and that fit this agent.
#[derive(Clone, Debug)]
pub struct Trusted {
    /// The covenant policy.
    pub policy: Policy,
    /// The partner directory.
    pub directory: Directory,
    /// The exact signed texts, for the local cache (re-verified when read back).
    pub raw: Documents,
}

impl Trusted {
    /// Our own roles, as the directory lists them.
    pub fn roles_of(&self, oin: &Oin) -> Vec<Role> {
        self.directory
            .active_party(oin)
            .map(|p| p.roles.clone())
            .unwrap_or_default()
    }

    /// The directory serial.
    pub fn serial(&self) -> u64 {
        self.directory.serial
    }
}

/// What the agent knows about itself, to check the documents against.
#[derive(Clone, Debug)]
pub struct Me {
    /// Our OIN.
    pub oin: Oin,
    /// The public half of our signing key.
    pub signing: VerifyingKey,
    /// Our age recipient (`age1...`).
    pub age_recipient: String,
}

/// Verify signed documents against the pinned federation key and check that the directory
/// lists this agent, active, with the keys it holds.
pub fn verify(pinned: &VerifyingKey, docs: &Documents, me: &Me) -> Result<Trusted, Error> {
    let (policy, dir) = directory::load_signed_documents(
        pinned,
        (docs.policy.as_bytes(), &docs.policy_sig),
        (docs.directory.as_bytes(), &docs.directory_sig),
    )
    .map_err(|e| {
        Error::Documents(format!(
            "the policy and directory do not verify against the pinned federation key: {e}"
        ))
    })?;
    let party = dir.active_party(&me.oin).ok_or_else(|| {
        Error::Documents(format!(
            "OIN {} is not an active party in the directory (serial {})",
            me.oin, dir.serial
        ))
    })?;
    if party.verifying_key().ok() != Some(me.signing) {
        return Err(Error::Config {
            path: PathBuf::from("keys.signing_key"),
            message: format!(
                "the signing key is not the one the directory lists for {} ({})",
                me.oin,
                keys::verifying_key_to_text(&me.signing)
            ),
        });
    }
    if party.age_recipient.trim() != me.age_recipient {
        return Err(Error::Config {
            path: PathBuf::from("keys.age_identity"),
            message: format!(
                "the age identity is not the one the directory lists for {}",
                me.oin
            ),
        });
    }
    Ok(Trusted {
        policy,
        directory: dir,
        raw: docs.clone(),
    })
}

/// Whether a newly verified set may replace the current one: never a lower directory
/// serial, and never another covenant.
pub fn may_replace(current: &Trusted, new: &Trusted) -> Result<(), Error> {
    if new.policy.covenant.id != current.policy.covenant.id {
        return Err(Error::Documents(format!(
            "the broker now serves covenant '{}', this agent belongs to '{}'",
            new.policy.covenant.id, current.policy.covenant.id
        )));
    }
    if new.directory.serial < current.directory.serial {
        return Err(Error::Documents(format!(
            "the broker serves directory serial {}, older than the accepted serial {}",
            new.directory.serial, current.directory.serial
        )));
    }
    if new.directory.serial == current.directory.serial && new.raw != current.raw {
        return Err(Error::Documents(format!(
            "the broker serves other documents under the accepted serial {}; a new \
             version needs a higher serial",
            current.directory.serial
        )));
    }
    Ok(())
}
