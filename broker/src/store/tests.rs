//! The store's tests: writes, receipts, expiry, restarts and the moves of older versions.
#![allow(clippy::unwrap_used)]

use std::sync::Barrier;

use chrono::Duration;
use ketenpost_schemas::keys::SigningKey;

use std::collections::BTreeSet;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ketenpost_core::checks::Authorised;
use ketenpost_core::message::MessageMeta;
use ketenpost_core::registry::Registry as _;
use ketenpost_schemas::envelope::Envelope;
use ketenpost_schemas::ids::{MessageId, Oin};
use ketenpost_schemas::protocol::Delivery;

use super::codec::{expiry_key, json};
use super::reconcile::has_tree;
use super::*;
use crate::audit::{AuditEntry, AuditTrail};
use ketenpost_core::effects::Effects;
use ketenpost_schemas::control::SignedRecord;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::protocol::RejectCode;
use sled::transaction::ConflictableTransactionError;

/// `n` authorised signalen from a corporation to a zorgaanbieder, and the
/// zorgaanbieder.
fn authorised(n: usize) -> (Vec<Authorised>, Oin) {
    let fx = ketenpost_core::testing::Fx::new();
    let messages = (0..n)
        .map(|_| {
            let draft = fx.draft(Kind::Signaal, &[(&fx.zorg, "zorgaanbieder")]);
            fx.check_as(&fx.corp, &fx.seal(&fx.corp, draft)).unwrap()
        })
        .collect();
    (messages, fx.zorg.oin.clone())
}

/// Whether `needle` occurs in any file under `dir`.
fn on_disk(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let path = e.unwrap().path();
        if path.is_dir() {
            return on_disk(&path, needle);
        }
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

/// The store and audit trail in `dir`, as the broker opens them.
fn open_in(dir: &std::path::Path) -> (Store, Arc<AuditTrail>) {
    // sled releases its file lock when its own IO threads let go of the database
    // dropped just before, which can be a moment after the last handle: a bounded
    // wait for that, nothing else.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => break db,
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the test database: {e}"),
        }
    };
    let store = Store::open(db.clone(), &dir.join("db"), &dir.join("spool")).unwrap();
    let trail = Arc::new(
        crate::audit::AuditTrail::open(&db, &dir.join("audit"), SigningKey::from_bytes(&[7u8; 32]))
            .unwrap(),
    );
    (store, trail)
}

/// The sealed envelopes of `messages`.
fn envelopes_of(messages: &[Authorised]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|a| a.verified().envelope().encode())
        .collect()
}

/// Write every message, as accepted now.
fn put_all(store: &Store, trail: &Arc<AuditTrail>, messages: &[Authorised]) {
    for a in messages {
        let meta = MessageMeta::accepted(a, Utc::now());
        store.put_message(a, &meta, trail, vec![]).unwrap();
    }
}

fn signer() -> NoticeSigner {
    NoticeSigner {
        oin: ketenpost_schemas::control::BROKER_SIGNER.parse().unwrap(),
        key: SigningKey::from_bytes(&[7u8; 32]),
    }
}

/// A signaal from the corporation to the zorgaanbieder and the gemeente, stored.
fn put_signaal(
    fx: &ketenpost_core::testing::Fx,
    store: &Store,
    trail: &Arc<AuditTrail>,
) -> Authorised {
    let draft = fx.draft(
        Kind::Signaal,
        &[(&fx.zorg, "zorgaanbieder"), (&fx.gem, "gemeente")],
    );
    let a = fx.check_as(&fx.corp, &fx.seal(&fx.corp, draft)).unwrap();
    let meta = MessageMeta::accepted(&a, Utc::now());
    store.put_message(&a, &meta, trail, vec![]).unwrap();
    a
}

/// The decision of `recipient`'s receipt of message `id`, as the server makes it.
fn receipt_decision(
    store: &Store,
    recipient: &Oin,
    id: &MessageId,
    sha: &str,
    forwarded: &SignedRecord,
    now: DateTime<Utc>,
) -> impl Fn(&TxView<'_>) -> TxResult<Result<Effects, ketenpost_schemas::protocol::Rejection>>
       + Send
       + 'static {
    let r = ketenpost_schemas::control::DeliveryReceipt {
        message_id: *id,
        recipient: recipient.clone(),
        body_sha256: sha.into(),
        received_at: now,
    };
    let digest = store.view_digest(id, recipient).unwrap();
    let (recipient, forwarded) = (recipient.clone(), forwarded.clone());
    move |v| v.receipt(&recipient, &r, &forwarded, digest.as_deref(), now)
}

/// The record a receipt forwards to the sender, as the store keeps it (its content is
/// not read here).
fn forwarded_receipt(signer: &Oin) -> SignedRecord {
    SignedRecord {
        kind: Kind::DeliveryReceipt,
        signer: signer.clone(),
        record: String::new(),
        signature: String::new(),
    }
}

/// A receipt applied as the server applies it: one transition, flush, then finish.
fn receipt(
    store: &Store,
    trail: &AuditTrail,
    recipient: &Oin,
    id: &MessageId,
    sha: &str,
    forwarded: &SignedRecord,
) -> Result<Applied, ketenpost_schemas::protocol::Rejection> {
    let now = Utc::now();
    let decide = receipt_decision(store, recipient, id, sha, forwarded, now);
    let out = store
        .transition("receipt", trail, &signer(), now, decide)
        .unwrap();
    if let Ok(a) = &out {
        store.flush().unwrap();
        store.finish("receipt", a);
    }
    out
}

/// The expiry sweep at `now`: how many messages expired.
fn expire(store: &Store, trail: &AuditTrail, now: DateTime<Utc>) -> Vec<MessageId> {
    let mut expired = Vec::new();
    let mut done = Vec::new();
    for id in store.due(now).unwrap() {
        let a = store
            .transition("expire", trail, &signer(), now, |v| {
                Ok(Ok::<_, std::convert::Infallible>(
                    ketenpost_core::transitions::expire(v.meta(&id)?, v.clock(&id)?, now),
                ))
            })
            .unwrap()
            .unwrap();
        if a.changed {
            expired.push(id);
        }
        done.push(a);
    }
    store.flush().unwrap();
    for a in &done {
        store.finish("expire", a);
    }
    expired
}

#[test]
fn a_body_is_spooled_until_receipted_or_expired_and_survives_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let open = || open_in(dir.path());
    let (messages, zorg) = authorised(2);
    let envelopes = envelopes_of(&messages);
    {
        let (store, trail) = open();
        put_all(&store, &trail, &messages);
        rt.block_on(store.close());
    }
    // After a restart both are still delivered, byte for byte.
    let (store, trail) = open();
    let Fetched {
        items: deliveries,
        first,
        ..
    } = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!(first.len(), 2);
    let fetched: Vec<Vec<u8>> = deliveries
        .iter()
        .map(|d| match d {
            Delivery::Message { envelope, .. } => {
                ketenpost_schemas::protocol::envelope_from_b64(envelope).unwrap()
            }
            other => panic!("not a message: {other:?}"),
        })
        .collect();
    assert_eq!(
        fetched.iter().collect::<BTreeSet<_>>(),
        envelopes.iter().collect::<BTreeSet<_>>()
    );
    let forwarded = forwarded_receipt(&zorg);
    let first_id = messages[0].header().id;
    let sha = messages[0]
        .header()
        .body_for(&zorg)
        .unwrap()
        .1
        .sha256
        .clone();
    // A receipt for another body is not one for this message.
    let wrong = receipt(
        &store,
        &trail,
        &zorg,
        &first_id,
        &"00".repeat(32),
        &forwarded,
    );
    assert_eq!(wrong.unwrap_err().code, RejectCode::Conflict);
    let outcome = receipt(&store, &trail, &zorg, &first_id, &sha, &forwarded).unwrap();
    assert_eq!(
        outcome.destroy.len(),
        1,
        "the last receipt releases the body"
    );
    store.flush().unwrap();
    assert!(!on_disk(&spool_dir, &envelopes[0]), "receipted body gone");
    assert!(on_disk(&spool_dir, &envelopes[1]), "the other is kept");
    // The same receipt again: the message is gone, so it is not queued any more.
    let again = receipt(&store, &trail, &zorg, &first_id, &sha, &forwarded);
    assert_eq!(again.unwrap_err().code, RejectCode::Conflict);
    // The second expires unreceipted.
    let expired = expire(&store, &trail, Utc::now() + Duration::days(400));
    assert_eq!(expired, vec![messages[1].header().id]);
    store.flush().unwrap();
    assert!(!on_disk(&spool_dir, &envelopes[1]), "expired body gone");
    assert_eq!(
        (store.bodies_held().unwrap(), store.queued().unwrap()),
        (0, 0)
    );
    assert!(store
        .fetch(&zorg, 10, &Default::default())
        .unwrap()
        .items
        .iter()
        .all(|d| !matches!(d, Delivery::Message { .. })));
    rt.block_on(store.close());
}

#[test]
fn metadata_an_older_version_wrote_as_json_is_delivered_receipted_and_rewritten() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(1);
    let id = messages[0].header().id;
    {
        let (store, trail) = open_in(dir.path());
        put_all(&store, &trail, &messages);
        let stored = store.meta.get(id.0.as_bytes()).unwrap().unwrap();
        assert_eq!(stored[0], ketenpost_core::message::FORMAT_V1);
        let meta = meta_of(&stored).unwrap();
        store.meta.insert(id.0.as_bytes(), json(&meta)).unwrap();
        store.flush().unwrap();
        rt.block_on(store.close());
    }
    let (store, trail) = open_in(dir.path());
    let Fetched {
        items: deliveries,
        first,
        ..
    } = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!((deliveries.len(), first), (1, vec![id]));
    // A change writes it in the binary form.
    let fetched = store
        .transition("fetch", &trail, &signer(), Utc::now(), |v| {
            Ok(Ok::<_, ()>(ketenpost_core::transitions::fetched(
                &zorg,
                v.meta(&id)?,
            )))
        })
        .unwrap();
    assert!(fetched.is_ok());
    store.flush().unwrap();
    let stored = store.meta.get(id.0.as_bytes()).unwrap().unwrap();
    assert_eq!(stored[0], ketenpost_core::message::FORMAT_V1);
    assert!(meta_of(&stored).unwrap().unwrap().fetched.contains(&zorg));
    let sha = messages[0]
        .header()
        .body_for(&zorg)
        .unwrap()
        .1
        .sha256
        .clone();
    let forwarded = forwarded_receipt(&zorg);
    let outcome = receipt(&store, &trail, &zorg, &id, &sha, &forwarded).unwrap();
    assert_eq!(outcome.destroy.len(), 1);
    rt.block_on(store.close());
}

#[test]
fn a_settled_message_keeps_its_id_as_the_dedup_entry_and_nothing_else() {
    use ketenpost_core::registry::Registry;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(2);
    let (store, trail) = open_in(dir.path());
    put_all(&store, &trail, &messages);
    assert_eq!(store.bodies_held().unwrap(), 2);
    let later = Utc::now() + Duration::days(400);
    assert_eq!(expire(&store, &trail, later).len(), 2);
    for a in &messages {
        let id = a.header().id;
        assert_eq!(store.meta(&id).unwrap(), None);
        assert_eq!(
            store.meta.get(id.0.as_bytes()).unwrap().as_deref(),
            Some(SETTLED)
        );
        assert!(Registry::seen(&store, &id).unwrap());
        assert_eq!(store.view_digest(&id, &zorg).unwrap(), None);
    }
    assert_eq!(store.bodies_held().unwrap(), 0);
    assert!(store.due(later).unwrap().is_empty());
    assert!(store
        .fetch(&zorg, 10, &Default::default())
        .unwrap()
        .items
        .is_empty());
    // Accepting one of them again is a duplicate, and changes nothing.
    let meta = MessageMeta::accepted(&messages[0], Utc::now());
    assert!(matches!(
        store.put_message(&messages[0], &meta, &trail, vec![]),
        Err(StoreError::Duplicate)
    ));
    assert_eq!(store.bodies_held().unwrap(), 0);
    let (fresh, _) = authorised(1);
    assert!(!Registry::seen(&store, &fresh[0].header().id).unwrap());
    rt.block_on(store.close());
}

#[test]
fn the_dedup_set_an_older_version_kept_apart_moves_into_the_metadata() {
    use ketenpost_core::registry::Registry;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(3);
    let ids: Vec<MessageId> = messages.iter().map(|a| a.header().id).collect();
    {
        let (store, trail) = open_in(dir.path());
        put_all(&store, &trail, &messages[..1]);
        let later = Utc::now() + Duration::days(400);
        assert_eq!(expire(&store, &trail, later), ids[..1]);
        put_all(&store, &trail, &messages[1..]);
        // As an older version left it: every accepted id in `seen`, and no key in
        // `meta` for a message no longer held (the first, expired).
        let seen = store.db.open_tree("seen").unwrap();
        for id in &ids {
            seen.insert(id.0.as_bytes(), Utc::now().to_rfc3339().as_bytes())
                .unwrap();
        }
        store.meta.remove(ids[0].0.as_bytes()).unwrap();
        store.flush().unwrap();
        rt.block_on(store.close());
    }
    let (store, trail) = open_in(dir.path());
    assert!(!has_tree(&store.db, "seen"));
    assert_eq!(
        store.meta.get(ids[0].0.as_bytes()).unwrap().as_deref(),
        Some(SETTLED)
    );
    for id in &ids {
        assert!(Registry::seen(&store, id).unwrap());
    }
    // The messages still held are untouched, and delivered.
    assert_eq!(store.bodies_held().unwrap(), 2);
    let Fetched {
        items: deliveries, ..
    } = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!(deliveries.len(), 2);
    let meta = MessageMeta::accepted(&messages[0], Utc::now());
    assert!(matches!(
        store.put_message(&messages[0], &meta, &trail, vec![]),
        Err(StoreError::Duplicate)
    ));
    rt.block_on(store.close());
}

#[test]
fn queue_entries_an_older_version_kept_one_key_each_move_into_blocks() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(40);
    let before;
    {
        let (store, trail) = open_in(dir.path());
        put_all(&store, &trail, &messages);
        before = store.fetch(&zorg, 100, &Default::default()).unwrap().items;
        assert_eq!(before.len(), 40);
        // As an older version left them: one key per entry in `queue`. The first
        // block stays, as a start that moved it and crashed before dropping `queue`
        // leaves it.
        let legacy = store.db.open_tree(queue::LEGACY_TREE).unwrap();
        for (i, item) in store.queue.iter().enumerate() {
            let (block, entries) = item.unwrap();
            let party = &block[..block.len() - 8];
            for (seq, id) in queue::entries(&entries).unwrap() {
                legacy.insert(key2(party, &seq.to_be_bytes()), &id).unwrap();
            }
            if i > 0 {
                store.queue.remove(block).unwrap();
            }
        }
        assert_eq!(legacy.len(), 40);
        store.flush().unwrap();
        rt.block_on(store.close());
    }
    let (store, _trail) = open_in(dir.path());
    assert!(!has_tree(&store.db, queue::LEGACY_TREE));
    // Each entry once, the ones moved before included.
    assert_eq!(store.queued().unwrap(), 40);
    // Fewer keys than entries, and the same deliveries in the same order.
    assert!(store.queue.len() < 40);
    assert_eq!(
        store.fetch(&zorg, 100, &Default::default()).unwrap().items,
        before
    );
    rt.block_on(store.close());
}

#[test]
fn expiry_entries_an_older_version_kept_one_key_each_move_into_blocks() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, _) = authorised(30);
    let mut ids: Vec<MessageId> = messages.iter().map(|a| a.header().id).collect();
    ids.sort();
    {
        let (store, trail) = open_in(dir.path());
        put_all(&store, &trail, &messages);
        // As an older version left them: expires-at ‖ id → body, one key each.
        let legacy = store.db.open_tree(expiry::LEGACY_TREE).unwrap();
        // The first block stays, as a move cut short by a crash leaves it.
        for (i, item) in store.expiry.iter().enumerate() {
            let (block, entries) = item.unwrap();
            for (_, id) in expiry::entries(&entries).unwrap() {
                let meta = store.meta(&MessageId(uuid::Uuid::from_bytes(id))).unwrap();
                let meta = meta.unwrap();
                legacy
                    .insert(
                        expiry_key(meta.expires_at, &id),
                        &meta.body_at.unwrap().to_bytes(),
                    )
                    .unwrap();
            }
            if i > 0 {
                store.expiry.remove(block).unwrap();
            }
        }
        assert_eq!(legacy.len(), 30);
        store.flush().unwrap();
        rt.block_on(store.close());
    }
    let (store, _trail) = open_in(dir.path());
    assert!(!has_tree(&store.db, expiry::LEGACY_TREE));
    assert!(store.expiry.len() < 30);
    assert!(store.due(Utc::now()).unwrap().is_empty());
    let mut due = store.due(Utc::now() + Duration::days(400)).unwrap();
    due.sort();
    assert_eq!(due, ids);
    rt.block_on(store.close());
}

#[test]
fn messages_that_expire_at_one_moment_share_blocks_of_at_most_sixteen() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, _) = authorised(50);
    let (store, trail) = open_in(dir.path());
    // As a TTL in workdays gives: every message of a day expires at one midnight.
    let midnight = Utc::now() + Duration::days(3);
    for a in &messages {
        let mut meta = MessageMeta::accepted(a, Utc::now());
        meta.expires_at = midnight;
        store.put_message(a, &meta, &trail, vec![]).unwrap();
    }
    let sizes: Vec<usize> = store
        .expiry
        .iter()
        .map(|item| expiry::entries(&item.unwrap().1).unwrap().count())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 50);
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    assert!(sizes.len() < 50, "{sizes:?}");
    assert!(store
        .due(midnight - Duration::milliseconds(1))
        .unwrap()
        .is_empty());
    assert_eq!(store.due(midnight).unwrap().len(), 50);
    // Expired, every entry is gone with its message.
    assert_eq!(expire(&store, &trail, midnight).len(), 50);
    assert_eq!(store.expiry.len(), 0);
    rt.block_on(store.close());
}

#[test]
fn a_damaged_queue_or_expiry_block_is_passed_over_and_stops_nothing_else() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(2);
    let (store, trail) = open_in(dir.path());
    // Sequence numbers from 32 on, so that the damaged block 0 comes first.
    for _ in 0..32 {
        store.db.generate_id().unwrap();
    }
    put_all(&store, &trail, &messages);
    // A block of the wrong length, before every other one, in both indexes.
    let mut early = zorg.as_str().as_bytes().to_vec();
    early.extend_from_slice(&[0; 8]);
    store.queue.insert(early, &[1u8; 5][..]).unwrap();
    store.expiry.insert([0u8; 16], &[1u8; 5][..]).unwrap();
    assert_eq!(
        store
            .fetch(&zorg, 10, &Default::default())
            .unwrap()
            .items
            .len(),
        2
    );
    let later = Utc::now() + Duration::days(400);
    assert_eq!(store.due(later).unwrap().len(), 2);
    rt.block_on(store.close());
}

#[test]
fn a_fetch_leaves_out_the_messages_it_is_told_to_skip_and_counts_them_not_against_max() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(3);
    let (store, trail) = open_in(dir.path());
    put_all(&store, &trail, &messages);
    let seqs = |d: &[Delivery]| -> Vec<u64> {
        d.iter()
            .filter_map(|d| match d {
                Delivery::Message { seq, .. } => Some(*seq),
                Delivery::Notice { .. } => None,
            })
            .collect()
    };
    let all = seqs(&store.fetch(&zorg, 10, &Default::default()).unwrap().items);
    assert_eq!(all.len(), 3);
    // The first two held by the party: the third alone, though max is 1.
    let held: std::collections::HashSet<u64> = all[..2].iter().copied().collect();
    let Fetched {
        items: rest, first, ..
    } = store.fetch(&zorg, 1, &held).unwrap();
    assert_eq!(seqs(&rest), vec![all[2]]);
    // Only what it delivers is a first fetch to record (none was recorded here).
    assert_eq!(first.len(), 1);
    // Every one held: nothing to deliver. A position that is not queued changes nothing.
    let every: std::collections::HashSet<u64> = all.iter().copied().chain([u64::MAX]).collect();
    assert!(seqs(&store.fetch(&zorg, 10, &every).unwrap().items).is_empty());
    // Still queued: a fetch that skips nothing delivers all three again.
    assert_eq!(
        seqs(&store.fetch(&zorg, 10, &Default::default()).unwrap().items),
        all
    );
    rt.block_on(store.close());
}

#[test]
fn a_damaged_body_is_not_delivered_blocks_nothing_and_goes_with_its_receipt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (store, trail) = open_in(dir.path());
    let (messages, zorg) = authorised(2);
    for a in &messages {
        let meta = MessageMeta::accepted(a, Utc::now());
        store.put_message(a, &meta, &trail, vec![]).unwrap();
    }
    // Flip one byte of the first message's body in its segment file.
    let damaged = messages[0].verified().envelope().encode();
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let bytes = std::fs::read(p).unwrap();
            bytes.windows(damaged.len()).any(|w| w == damaged)
        })
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(damaged.len())
        .position(|w| w == damaged)
        .unwrap();
    bytes[at + damaged.len() / 2] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    // The damaged one is skipped without taking the place of the intact one.
    let Fetched {
        items: deliveries, ..
    } = store.fetch(&zorg, 1, &Default::default()).unwrap();
    let intact = messages[1].verified().envelope().encode();
    match deliveries.as_slice() {
        [Delivery::Message { envelope, .. }] => assert_eq!(
            ketenpost_schemas::protocol::envelope_from_b64(envelope).unwrap(),
            intact
        ),
        other => panic!("expected the intact message alone: {other:?}"),
    }
    // A receipt is checked against the digest the header lists, kept with the metadata,
    // not against the broker's copy: one that names it is the recipient's signed word
    // that it holds that view (fetched before the damage, or had from elsewhere), and the
    // damaged copy goes as any receipted body does. One naming another digest is refused.
    let forwarded = forwarded_receipt(&zorg);
    let first = messages[0].header();
    let sha = first.body_for(&zorg).unwrap().1.sha256.clone();
    let refused = receipt(
        &store,
        &trail,
        &zorg,
        &first.id,
        &"0".repeat(64),
        &forwarded,
    );
    assert_eq!(refused.unwrap_err().code, RejectCode::Conflict);
    assert_eq!(store.bodies_held().unwrap(), 2);
    let _applied = receipt(&store, &trail, &zorg, &first.id, &sha, &forwarded).unwrap();
    assert_eq!(store.bodies_held().unwrap(), 1);
    assert!(!on_disk(
        &spool_dir,
        &damaged[damaged.len() / 4..damaged.len() / 2]
    ));
    rt.block_on(store.close());
}

/// The message's metadata as sled holds it, decoded (what the cache must agree with).
fn meta_in_sled(store: &Store, id: &MessageId) -> Option<MessageMeta> {
    super::codec::held_meta(&store.meta, id.0.as_bytes()).unwrap()
}

/// The cache of decoded metadata holds what the last committed transaction wrote: after a
/// message write, after decisions applied together in one transaction (each seeing what
/// those before it wrote, not the cache's older value), after a transaction rerun without
/// a decision that failed, and after the message is settled.
#[test]
fn the_metadata_cache_holds_what_the_last_committed_transaction_wrote() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let fx = ketenpost_core::testing::Fx::new();
    let (zorg, gem) = (fx.zorg.oin.clone(), fx.gem.oin.clone());
    let a = put_signaal(&fx, &store, &trail);
    let id = a.header().id;
    assert!(
        store.meta_cache.get(id.0.as_bytes()).is_some(),
        "kept at its write"
    );
    assert_eq!(store.meta(&id).unwrap(), meta_in_sled(&store, &id));

    // Both first fetches and the zorgaanbieder's receipt in one transaction; the first
    // decision fails once (as a record that does not parse would), so the transaction
    // runs again without it.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let failing = |_: &TxView<'_>| -> TxResult<Result<Effects, ()>> {
        if failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(Ok(Effects::default()));
        }
        Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
            what: "test",
            reason: "fails once".into(),
        }))
    };
    let fetched_by = |who: &Oin| {
        let who = who.clone();
        move |v: &TxView<'_>| -> TxResult<Result<Effects, ()>> {
            Ok(Ok(ketenpost_core::transitions::fetched(&who, v.meta(&id)?)))
        }
    };
    let (by_zorg, by_gem) = (fetched_by(&zorg), fetched_by(&gem));
    let forwarded = forwarded_receipt(&zorg);
    let sha = a.header().body_for(&zorg).unwrap().1.sha256.clone();
    let now = Utc::now();
    let receipted = receipt_decision(&store, &zorg, &id, &sha, &forwarded, now);
    let receipted = |v: &TxView<'_>| -> TxResult<Result<Effects, ()>> {
        receipted(v).map(|r| r.map_err(|_| ()))
    };
    let outcomes = store
        .transitions_together(
            &trail,
            &signer(),
            now,
            &[&failing, &by_zorg, &by_gem, &receipted],
        )
        .unwrap();
    assert!(outcomes[0].is_err(), "the failing decision was left out");
    assert!(outcomes[1..].iter().all(|o| matches!(o, Ok(Some(_)))));
    store.flush().unwrap();
    let held = store.meta(&id).unwrap().unwrap();
    assert_eq!(held.fetched, [zorg.clone(), gem.clone()].into());
    assert_eq!(held.pending, [gem.clone()].into());
    assert_eq!(Some(held), meta_in_sled(&store, &id));

    // The last receipt settles it: gone from the cache as from sled.
    let sha = a.header().body_for(&gem).unwrap().1.sha256.clone();
    assert!(receipt(&store, &trail, &gem, &id, &sha, &forwarded).is_ok());
    assert!(store.meta_cache.get(id.0.as_bytes()).is_none());
    assert_eq!(store.meta(&id).unwrap(), None);
    assert_eq!(meta_in_sled(&store, &id), None);
    rt.block_on(store.close());
}

/// Two recipients receipt the same message at the same moment while a third fetch
/// changes its metadata: neither receipt is refused (the receipt race), and the body
/// goes with the last one.
#[test]
fn concurrent_receipts_of_one_message_are_all_accepted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let fx = ketenpost_core::testing::Fx::new();
    let (zorg, gem) = (fx.zorg.oin.clone(), fx.gem.oin.clone());
    for _ in 0..20 {
        let a = put_signaal(&fx, &store, &trail);
        let id = a.header().id;
        let forwarded = forwarded_receipt(&zorg);
        let barrier = Barrier::new(3);
        let outcomes = std::thread::scope(|s| {
            let fetcher = s.spawn(|| {
                barrier.wait();
                let Fetched { first, .. } = store.fetch(&gem, 10, &Default::default()).unwrap();
                let _applied = store
                    .transition("fetch", &trail, &signer(), Utc::now(), |v| {
                        let mut fx = ketenpost_core::effects::Effects::default();
                        for id in &first {
                            fx.extend(ketenpost_core::transitions::fetched(&gem, v.meta(id)?));
                        }
                        Ok(Ok::<_, std::convert::Infallible>(fx))
                    })
                    .unwrap()
                    .unwrap();
            });
            let receipts: Vec<_> = [&zorg, &gem]
                .map(|who| {
                    let sha = a.header().body_for(who).unwrap().1.sha256.clone();
                    let (store, trail, forwarded, barrier) = (&store, &trail, &forwarded, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        receipt(store, trail, who, &id, &sha, forwarded)
                    })
                })
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            fetcher.join().unwrap();
            receipts
        });
        for o in &outcomes {
            assert!(o.is_ok(), "a legitimate receipt was refused: {o:?}");
        }
        let destroyed: usize = outcomes
            .iter()
            .map(|o| o.as_ref().unwrap().destroy.len())
            .sum();
        assert_eq!(destroyed, 1, "the body goes with the last receipt, once");
    }
    assert_eq!(
        (store.bodies_held().unwrap(), store.queued().unwrap()),
        (0, 0)
    );
    rt.block_on(store.close());
}

/// Decisions queued for the writer thread together: each sees what the ones before it
/// wrote (the second receipt releases the body, once), a refusal and a decision that
/// fails take nothing down with them, and every applied one is durable and finished
/// (its body destroyed) when its ticket says done.
#[test]
fn queued_decisions_are_applied_together_and_fail_alone() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let fx = ketenpost_core::testing::Fx::new();
    let a = put_signaal(&fx, &store, &trail);
    let id = a.header().id;
    let now = Utc::now();
    let queue_receipt = |who: &Oin| {
        let sha = a.header().body_for(who).unwrap().1.sha256.clone();
        let forwarded = forwarded_receipt(who);
        let decide = receipt_decision(&store, who, &id, &sha, &forwarded, now);
        store
            .begin_transition("receipt", &trail, &signer(), now, true, decide)
            .unwrap()
    };
    let records_before = trail.head().seq;
    let first = queue_receipt(&fx.zorg.oin);
    let failing = store
        .begin_transition("receipt", &trail, &signer(), now, true, |_v| {
            Err::<Result<Effects, ()>, _>(ConflictableTransactionError::Abort(
                StoreError::Corrupt {
                    what: "message metadata",
                    reason: "test".into(),
                },
            ))
        })
        .unwrap();
    let refused = store
        .begin_transition("receipt", &trail, &signer(), now, true, |_v| {
            Ok(Err::<Effects, _>("refused"))
        })
        .unwrap();
    let second = queue_receipt(&fx.gem.oin);
    let (first, failing, refused, second) = rt.block_on(async {
        (
            first.done().await,
            failing.done().await,
            refused.done().await,
            second.done().await,
        )
    });
    let (first, second) = (first.unwrap().unwrap(), second.unwrap().unwrap());
    assert!(
        matches!(failing, Err(StoreError::Corrupt { .. })),
        "{failing:?}"
    );
    assert!(matches!(refused, Ok(Err("refused"))), "{refused:?}");
    assert_eq!(first.destroy.len() + second.destroy.len(), 1);
    assert_eq!(
        (store.bodies_held().unwrap(), store.queued().unwrap()),
        (0, 0)
    );
    assert!(store.meta(&id).unwrap().is_none());
    // Both receipts audited, nothing of the others.
    assert_eq!(
        trail.head().seq - records_before,
        (first.audited + second.audited) as u64
    );
    rt.block_on(store.close());
}

#[test]
fn a_start_destroys_bodies_that_no_metadata_refers_to() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let open = || open_in(dir.path());
    let (messages, _) = authorised(2);
    let envelopes = envelopes_of(&messages);
    let unlanded = b"a body appended by a submission that never landed".to_vec();
    {
        let (store, trail) = open();
        put_all(&store, &trail, &messages);
        // What a crash after a durable expiry and before the body was destroyed
        // leaves: the first message's metadata is gone, its body is not.
        let id = messages[0].header().id;
        let later = Utc::now() + Duration::days(400);
        let applied = store
            .transition("expire", &trail, &signer(), later, |v| {
                Ok(Ok::<_, std::convert::Infallible>(
                    ketenpost_core::transitions::expire(v.meta(&id)?, v.clock(&id)?, later),
                ))
            })
            .unwrap()
            .unwrap();
        assert_eq!(applied.destroy.len(), 1);
        // And a crash between a body's append and its metadata's transaction.
        store.spool.append(&[7; 16], &unlanded).unwrap();
        store.flush().unwrap();
        rt.block_on(store.close());
    }
    assert!(on_disk(&spool_dir, &envelopes[0]));
    assert!(on_disk(&spool_dir, &unlanded));
    let (store, _trail) = open();
    assert!(
        !on_disk(&spool_dir, &envelopes[0]),
        "the released body is destroyed"
    );
    assert!(
        !on_disk(&spool_dir, &unlanded),
        "the unlanded body is destroyed"
    );
    assert!(
        on_disk(&spool_dir, &envelopes[1]),
        "the referenced body stays"
    );
    assert_eq!(store.bodies_held().unwrap(), 1);
    rt.block_on(store.close());
}

#[test]
fn a_store_without_body_counts_is_counted_once_at_its_first_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let open = || open_in(dir.path());
    let (messages, zorg) = authorised(3);
    let counts = |store: &Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .segments
            .iter()
            .map(|i| {
                let (k, v) = i.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    let kept = {
        let (store, trail) = open();
        put_all(&store, &trail, &messages);
        let kept = counts(&store);
        assert!(kept.contains(&(COUNTED.to_vec(), vec![1])));
        assert!(kept.contains(&(1u32.to_be_bytes().to_vec(), 3u64.to_be_bytes().to_vec())));
        // As an older version left it: no counts.
        store.segments.clear().unwrap();
        store.flush().unwrap();
        rt.block_on(store.close());
        kept
    };
    for _ in 0..2 {
        let (store, _trail) = open();
        assert_eq!(counts(&store), kept, "counted from the metadata, then kept");
        assert_eq!(store.bodies_held().unwrap(), 3);
        assert_eq!(
            store
                .fetch(&zorg, 10, &Default::default())
                .unwrap()
                .items
                .len(),
            3
        );
        rt.block_on(store.close());
    }
}

#[test]
fn dropping_every_handle_releases_the_database() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("the previous store released the database");
        let store = Store::open(db, &dir.path().join("db"), &dir.path().join("spool")).unwrap();
        let copy = store.clone();
        drop(store);
        assert_eq!(copy.bodies_held().unwrap(), 0);
        drop(copy);
    }
}

#[test]
fn concurrent_puts_share_transactions_and_a_duplicate_fails_alone() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let store = Store::open(
        db.clone(),
        &dir.path().join("db"),
        &dir.path().join("spool"),
    )
    .unwrap();
    let trail = Arc::new(
        crate::audit::AuditTrail::open(
            &db,
            &dir.path().join("audit"),
            SigningKey::from_bytes(&[7u8; 32]),
        )
        .unwrap(),
    );
    // Every message twice, so duplicates meet in one combined transaction as well as
    // across transactions.
    let (messages, _) = authorised(24);
    let threads = 8;
    let barrier = Barrier::new(threads);
    let writing = std::sync::atomic::AtomicBool::new(true);
    let outcomes: Vec<(MessageId, Result<(), StoreError>)> = std::thread::scope(|s| {
        // The archiver moves records out of the database while the writes go on.
        let archiver = s.spawn(|| {
            let mut moved = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                moved += store.archive_audit(&trail).unwrap();
                std::thread::yield_now();
            }
            moved
        });
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (store, messages, barrier, trail) = (&store, &messages, &barrier, &trail);
                s.spawn(move || {
                    barrier.wait();
                    (0..messages.len() * 2)
                        .filter(|i| i % threads == t)
                        .map(|i| {
                            let a = &messages[i % messages.len()];
                            {
                                let entry = AuditEntry::ok(crate::audit::AuditEvent::Accepted)
                                    .actor(&a.header().sender)
                                    .message_id(a.header().id);
                                (
                                    a.header().id,
                                    store.put_message(
                                        a,
                                        &MessageMeta::accepted(a, Utc::now()),
                                        trail,
                                        vec![entry],
                                    ),
                                )
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let outcomes = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        writing.store(false, std::sync::atomic::Ordering::SeqCst);
        archiver.join().unwrap();
        outcomes
    });
    for a in &messages {
        let id = a.header().id;
        let mine: Vec<_> = outcomes.iter().filter(|(i, _)| *i == id).collect();
        assert_eq!(mine.len(), 2);
        let ok = mine.iter().filter(|(_, r)| r.is_ok()).count();
        let dup = mine
            .iter()
            .filter(|(_, r)| matches!(r, Err(StoreError::Duplicate)))
            .count();
        assert_eq!((ok, dup), (1, 1), "{id}: {mine:?}");
        assert!(store.seen(&id).unwrap());
    }
    assert_eq!(store.bodies_held().unwrap(), messages.len() as u64);
    assert_eq!(store.queued().unwrap(), messages.len());
    // One audit record per accepted message, none for a duplicate, chained.
    assert_eq!(trail.head().seq, messages.len() as u64);
    let report = crate::audit::verify_trail_of(&db, &trail, &trail.verifying_key()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, messages.len() as u64);
    // The rest archived too, the trail still reads whole and verifies.
    store.archive_audit(&trail).unwrap();
    assert_eq!(trail.archive_of().mark().seq, messages.len() as u64);
    let report = crate::audit::verify_trail_of(&db, &trail, &trail.verifying_key()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, messages.len() as u64);
    let read: Vec<_> = trail
        .iter_range(1, trail.head().seq)
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(read, (1..=messages.len() as u64).collect::<Vec<_>>());
    // Each combined write was flushed.
    assert!(store.flush_count() >= 1);
    assert!(store.flush_count() <= messages.len() as u64);
    rt.block_on(store.close());
}

/// A fetch hands out only what a flush made durable: a decision applied and not flushed
/// holds the watermark back until a commit covers it, and a mark already covered needs
/// no flush at all.
#[test]
fn what_a_read_saw_is_durable_once_the_commit_covering_it_returns() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(1);
    let id = messages[0].header().id;
    let (store, trail) = open_in(dir.path());
    // Written and flushed by the writer: what a fetch reads now is durable already.
    put_all(&store, &trail, &messages);
    let Fetched {
        items: deliveries,
        first,
        mark,
    } = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!((deliveries.len(), first.clone(), mark), (1, vec![id], 0));
    let mark = store.read_mark();
    assert!(store.watermark.durable() >= mark);
    let flushes = store.flush_count();
    rt.block_on(store.commit_covering(mark)).unwrap();
    assert_eq!(
        store.flush_count(),
        flushes,
        "a covered mark needs no flush"
    );
    // A decision applied and not yet flushed: a read that may have seen it waits for a
    // flush.
    let applied = store
        .transition("fetch", &trail, &signer(), Utc::now(), |v| {
            Ok(Ok::<_, ()>(ketenpost_core::transitions::fetched(
                &zorg,
                v.meta(&id)?,
            )))
        })
        .unwrap()
        .unwrap();
    // The message's own write is durable: a fetch needs nothing more, though it may have
    // read the decision (which takes no deliverability away or gives any).
    let again = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!((again.items.len(), again.mark), (1, 0));
    let mark = store.read_mark();
    assert!(store.watermark.durable() < mark);
    rt.block_on(store.commit_covering(mark)).unwrap();
    store.finish("fetch", &applied);
    assert!(store.watermark.durable() >= mark);
    assert_eq!(store.flush_count(), flushes + 1);
    // While a transaction runs, a flush covers only what ended before it.
    let running = store.watermark.begin();
    let mark = store.read_mark();
    store.flush().unwrap();
    assert!(store.watermark.durable() < mark);
    drop(running);
    rt.block_on(store.commit_covering(mark)).unwrap();
    assert!(store.watermark.durable() >= mark);
    // A message whose write is not durable yet holds back the fetch that reads it.
    let running = store.watermark.begin();
    store
        .watermark
        .note_puts([*id.0.as_bytes()], running.number());
    let held = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert!(held.mark > store.watermark.durable());
    drop(running);
    rt.block_on(store.commit_covering(held.mark)).unwrap();
    assert!(store.watermark.durable() >= held.mark);
    assert_eq!(store.fetch(&zorg, 10, &Default::default()).unwrap().mark, 0);
    rt.block_on(store.close());
}

/// The writer's rounds are made durable by the settling thread's sync: a round written
/// into sled's log moves the watermark once synced; a group commit that finds what it
/// needs written waits for that sync instead of flushing; and once the store is
/// poisoned, no sync makes a round durable (after a failed fsync a later one proves
/// nothing).
#[test]
fn a_round_written_into_the_log_is_durable_only_after_a_sync_of_an_unpoisoned_store() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, _trail) = open_in(dir.path());
    let round = |covered| put::Settling {
        puts: Vec::new(),
        decided: Vec::new(),
        flushed: Some(put::Flushed {
            covered,
            started: std::time::Instant::now(),
        }),
        written: false,
        answers: false,
    };
    // A transaction ends; the writer flushes it into the log and notes it written.
    let n = store.watermark.begin().number();
    let covered = store.watermark.covered();
    assert_eq!(covered, n);
    store.log.write(&store.db).unwrap();
    store.watermark.written_up_to(covered);
    assert!(store.watermark.durable() < n);
    // A fetch's commit needs it: the committer waits for the settling thread's sync (here
    // a thread standing in for it, a moment later) and flushes nothing itself.
    let flushes = store.flush_count();
    let settler = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            store.settle(vec![round(covered)]);
        })
    };
    rt.block_on(store.commit_covering(n)).unwrap();
    assert!(store.watermark.durable() >= n);
    settler.join().unwrap();
    assert_eq!(
        store.flush_count(),
        flushes + 1,
        "the settle's sync, no other"
    );
    // Poisoned: the next round is written, and its sync makes nothing durable.
    let m = store.watermark.begin().number();
    let covered = store.watermark.covered();
    store.log.write(&store.db).unwrap();
    store.watermark.written_up_to(covered);
    store.poison.set("a failed fsync (test)");
    store.settle(vec![round(covered)]);
    assert!(store.watermark.durable() < m);
    assert_eq!(store.flush_count(), flushes + 1);
    assert!(matches!(
        rt.block_on(store.commit_covering(m)),
        Err(StoreError::Poisoned(_))
    ));
    rt.block_on(store.close());
}

/// Bodies appended together go where their puts find them, and a put that cannot be
/// queued (here: the store was poisoned between the append and the put) deletes its body;
/// a poisoned store appends nothing at all.
#[test]
fn bodies_appended_together_land_with_their_puts_or_go() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let (messages, zorg) = authorised(3);
    let all: Vec<&Authorised> = messages.iter().collect();
    let at = store.append_bodies(&all).unwrap();
    assert_eq!(at.len(), 3);
    assert_eq!(store.spool.bodies(), 3);
    // The first two are written with their places; the third's put fails and its body goes.
    for (a, place) in messages.iter().zip(&at).take(2) {
        let meta = MessageMeta::accepted(a, Utc::now());
        store
            .begin_put_at(*place, a, &meta, &trail, vec![], None, None)
            .unwrap()
            .wait()
            .unwrap();
    }
    store.poison.set("a failed fsync (test)");
    let last = &messages[2];
    let meta = MessageMeta::accepted(last, Utc::now());
    assert!(matches!(
        store.begin_put_at(at[2], last, &meta, &trail, vec![], None, None),
        Err(StoreError::Poisoned(_))
    ));
    assert_eq!(store.spool.bodies(), 2);
    assert!(store
        .spool
        .read(&at[2], &last.header().id.0.into_bytes())
        .is_err());
    // Poisoned: nothing more is appended.
    assert!(matches!(
        store.append_bodies(&all),
        Err(StoreError::Poisoned(_))
    ));
    assert_eq!(store.spool.bodies(), 2);
    let fetched = store.fetch(&zorg, 10, &Default::default()).unwrap();
    assert_eq!(fetched.items.len(), 2);
    rt.block_on(store.close());
}

/// A round that finds nothing else waiting is synced and answered by the writer itself;
/// while the settling thread has rounds out, the writer hands its rounds on to it, so
/// every round is still answered in order.
#[test]
fn the_writer_settles_a_round_itself_only_when_nothing_else_waits() {
    use std::sync::atomic::Ordering;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let (messages, zorg) = authorised(6);
    let busy = &store.puts.settling;
    // One at a time: each round is the only one.
    put_all(&store, &trail, &messages[..2]);
    assert_eq!(store.commit_stats().settled(), (2, 0));
    // A round still out with the settling thread (standing in: the count of them).
    busy.fetch_add(1, Ordering::AcqRel);
    put_all(&store, &trail, &messages[2..4]);
    assert_eq!(store.commit_stats().settled(), (2, 2));
    // The settling thread takes its own rounds off the count once they are answered,
    // which can be a moment after their submissions heard.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while busy.load(Ordering::Acquire) != 1 {
        assert!(std::time::Instant::now() < deadline, "rounds left counted");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    busy.fetch_sub(1, Ordering::AcqRel);
    put_all(&store, &trail, &messages[4..]);
    assert_eq!(store.commit_stats().settled(), (4, 2));
    // Every round landed whole and durable, whoever settled it.
    assert!(store.watermark.durable() >= store.watermark.covered());
    assert_eq!(store.queued().unwrap(), messages.len());
    let fetched = store.fetch(&zorg, 100, &Default::default()).unwrap();
    assert_eq!(fetched.items.len(), messages.len());
    rt.block_on(store.close());
}

/// A round whose bodies cannot be synced lands nothing: its submission hears a storage
/// error, the store is poisoned and takes no more writes, and after a restart the message
/// is unknown (its body destroyed as an orphan), so the sender's retry is accepted.
#[test]
fn a_round_whose_bodies_cannot_be_synced_lands_nothing_and_its_retry_is_accepted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    let (messages, _) = authorised(3);
    let begin = |store: &Store, trail: &Arc<AuditTrail>, a: &Authorised| {
        store.begin_put(a, &MessageMeta::accepted(a, Utc::now()), trail, vec![])
    };
    // The writer takes the first round, then waits at its transaction.
    let io = store.puts.io.lock().unwrap();
    let first = begin(&store, &trail, &messages[0]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.puts.queue.lock().unwrap().puts.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer took nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The second is appended and queued; then the spool's fsync fails.
    let second = begin(&store, &trail, &messages[1]).unwrap();
    store.spool.fail_for_test("a failed fsync (test)");
    drop(io);
    assert!(
        matches!(
            second.wait(),
            Err(StoreError::Corrupt {
                what: "message body",
                ..
            })
        ),
        "the round whose bodies were not synced fails"
    );
    // The first round may or may not have been answered before the store was poisoned.
    let _ = first.wait();
    assert!(matches!(store.poison.check(), Err(StoreError::Poisoned(_))));
    assert!(begin(&store, &trail, &messages[2]).is_err());
    rt.block_on(store.close());
    drop((store, trail));

    let (store, trail) = open_in(dir.path());
    let [a, b, _] = &messages[..] else {
        unreachable!()
    };
    assert!(!store.seen(&b.header().id).unwrap());
    let first_landed = store.seen(&a.header().id).unwrap();
    assert_eq!(store.bodies_held().unwrap(), u64::from(first_landed));
    store
        .put_message(b, &MessageMeta::accepted(b, Utc::now()), &trail, vec![])
        .expect("the retry is accepted");
    assert_eq!(store.bodies_held().unwrap(), u64::from(first_landed) + 1);
    rt.block_on(store.close());
}

/// A group commit that waits for the settling thread's sync and sees the store poisoned
/// meanwhile makes no flush of its own: after a failed fsync a later one proves nothing,
/// so the waiting fetch hears the error and nothing becomes durable.
#[test]
fn a_commit_that_waits_for_the_settling_sync_fails_when_the_store_is_poisoned_meanwhile() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, _trail) = open_in(dir.path());
    // A transaction ends and the writer flushes it into the log: written, not durable.
    let n = store.watermark.begin().number();
    let covered = store.watermark.covered();
    store.log.write(&store.db).unwrap();
    store.watermark.written_up_to(covered);
    let flushes = store.flush_count();
    // The settling thread's sync fails (a moment later) instead of landing.
    let failing = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            store.poison.set("a failed fsync (test)");
        })
    };
    assert!(matches!(
        rt.block_on(store.commit_covering(n)),
        Err(StoreError::Poisoned(_))
    ));
    failing.join().unwrap();
    assert!(store.watermark.durable() < n, "nothing became durable");
    assert_eq!(
        store.flush_count(),
        flushes,
        "no flush of the committer's own"
    );
    rt.block_on(store.close());
}

/// Store `meta` as a version before views were kept with the metadata wrote it.
fn write_as_before_views(store: &Store, meta: MessageMeta) {
    let before = MessageMeta {
        views: Default::default(),
        ..meta
    };
    let _writing = store.meta_cache.writing();
    store
        .meta
        .insert(before.id.0.as_bytes(), before.to_bytes())
        .unwrap();
    // As an older version's broker starts: nothing of it kept decoded.
    store
        .meta_cache
        .committed([(before.id.0.into_bytes(), None)]);
}

/// The digest a receipt must name comes from the metadata, for a recipient still waiting
/// for the message, whatever the caller's limit; for metadata written before views were
/// kept with it, from the body, and a body longer than the caller's limit is left unread
/// (`Larger`). For a party that does not wait for it (not a recipient, or receipted
/// already) nothing is read, and the answer is the same as without a body.
#[test]
fn a_view_digest_comes_from_the_metadata_or_from_the_body_within_the_limit() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (messages, zorg) = authorised(1);
    let (store, trail) = open_in(dir.path());
    put_all(&store, &trail, &messages);
    let header = messages[0].header();
    let (id, sender) = (header.id, header.sender.clone());
    let sha = header.body_for(&zorg).unwrap().1.sha256.clone();
    let meta = store.meta(&id).unwrap().unwrap();
    let len = meta.body_at.unwrap().len;
    assert_eq!(
        store.view_digest_upto(&id, &zorg, 0).unwrap(),
        ViewDigest::Read(Some(sha.clone()))
    );
    write_as_before_views(&store, meta);
    assert_eq!(
        store.view_digest_upto(&id, &zorg, len).unwrap(),
        ViewDigest::Read(Some(sha.clone()))
    );
    assert_eq!(
        store.view_digest_upto(&id, &zorg, len - 1).unwrap(),
        ViewDigest::Larger
    );
    assert_eq!(store.view_digest(&id, &zorg).unwrap(), Some(sha.clone()));
    // The sender is no recipient: no digest, and no read of the body.
    assert_eq!(
        store.view_digest_upto(&id, &sender, 0).unwrap(),
        ViewDigest::Read(None)
    );
    let forwarded = forwarded_receipt(&zorg);
    let other = MessageId::new();
    assert_eq!(
        store.view_digest_upto(&other, &zorg, 0).unwrap(),
        ViewDigest::Read(None)
    );
    assert!(receipt(&store, &trail, &zorg, &id, &sha, &forwarded).is_ok());
    // Receipted: gone from the store.
    assert_eq!(
        store.view_digest_upto(&id, &zorg, 0).unwrap(),
        ViewDigest::Read(None)
    );
    rt.block_on(store.close());
}

/// Each recipient of a message with several views is delivered its own view and names its
/// own digest, the same from the views kept with the metadata as from the stored header.
#[test]
fn each_recipient_gets_its_own_view_from_the_metadata_as_from_the_header() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let fx = ketenpost_core::testing::Fx::new();
    let (store, trail) = open_in(dir.path());
    let a = put_signaal(&fx, &store, &trail);
    let id = a.header().id;
    let stored = a.verified().envelope().encode();
    let parties = [fx.zorg.oin.clone(), fx.gem.oin.clone()];
    let expected: Vec<(Vec<u8>, String)> = parties
        .iter()
        .map(|p| {
            let (index, body) = a.header().body_for(p).unwrap();
            (
                Envelope::delivery_bytes(&stored, index).unwrap(),
                body.sha256.clone(),
            )
        })
        .collect();
    assert_ne!(expected[0], expected[1], "two views");
    let delivered = |p: &Oin| -> Vec<u8> {
        let Fetched { items, .. } = store.fetch(p, 10, &Default::default()).unwrap();
        match &items[..] {
            [Delivery::Message { envelope, .. }] => {
                ketenpost_schemas::protocol::envelope_from_b64(envelope).unwrap()
            }
            other => panic!("not one message: {other:?}"),
        }
    };
    let meta = store.meta(&id).unwrap().unwrap();
    assert_eq!(meta.views.len(), 2);
    for (p, (bytes, sha)) in parties.iter().zip(&expected) {
        assert_eq!(&delivered(p), bytes);
        assert_eq!(store.view_digest(&id, p).unwrap().as_ref(), Some(sha));
    }
    // The same, from the header.
    write_as_before_views(&store, meta);
    for (p, (bytes, sha)) in parties.iter().zip(&expected) {
        assert_eq!(&delivered(p), bytes);
        assert_eq!(store.view_digest(&id, p).unwrap().as_ref(), Some(sha));
    }
    rt.block_on(store.close());
}

#[test]
fn one_archiver_pass_moves_more_than_a_moves_bytes_in_several_moves() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let (store, trail) = open_in(dir.path());
    // One record an entry (appended alone), about 300 bytes each: some 2.5 moves' worth.
    let n = 2_000u64;
    for i in 0..n {
        let entry = AuditEntry::ok(crate::audit::AuditEvent::Accepted)
            .message_id(MessageId::new())
            .reason(if i % 2 == 0 { "even" } else { "odd" });
        trail.append(entry, Utc::now()).unwrap();
    }
    let stored: usize = trail
        .records_tree()
        .iter()
        .map(|e| e.unwrap().1.len() + 1)
        .sum();
    assert!(stored > 2 * crate::audit::ARCHIVE_MOVE_BYTES, "{stored}");
    // A pass told to stop after its first move (the broker stopping) ends there...
    let asked = std::cell::Cell::new(0);
    let first = store
        .archive_audit_while(&trail, || {
            asked.set(asked.get() + 1);
            asked.get() == 1
        })
        .unwrap();
    assert!(first > 0 && first < n as usize, "{first}");
    assert_eq!(asked.get(), 2);
    // ...and the next pass moves the rest.
    assert_eq!(store.archive_audit(&trail).unwrap(), n as usize - first);
    assert!(trail.records_tree().is_empty());
    assert_eq!(trail.archive_of().mark().seq, n);
    let archived = std::fs::metadata(dir.path().join("audit").join("trail.jsonl"))
        .unwrap()
        .len();
    assert_eq!(archived, stored as u64);
    let report = crate::audit::verify_trail_of(store.db(), &trail, &trail.verifying_key()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records, n);
    rt.block_on(store.close());
}
