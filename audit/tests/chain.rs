//! The audit crate on its own: a chain built with `ChainHead` verifies, and every kind of
//! damage to it is found; checkpoints sign, verify and order; entries refuse free text.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use ketenpost_audit::{
    key_seq, parse_checkpoint, parse_record, round_is_lines, round_len, round_records, seq_key,
    verify_exported, AuditEntry, AuditEvent, ChainHead, Checkpoint, Outcome, Rounds, GENESIS_HASH,
};
use ketenpost_schemas::keys;

const ACTOR: &str = "00000001234567890000";
const PEER: &str = "00000009876543210000";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0).unwrap()
}

/// `n` records chained from the genesis, as stored (the exact bytes).
fn chain(n: usize) -> Vec<Vec<u8>> {
    let mut head = ChainHead::genesis();
    (0..n)
        .map(|i| {
            let entry = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok)
                .actor(ACTOR)
                .counterparty(PEER)
                .case_ref("case-0123456789abcdefghijklmnop")
                .kind("signaal");
            let (record, bytes) = head
                .next(entry, t0() + Duration::seconds(i as i64))
                .unwrap();
            head.advance(&record);
            bytes
        })
        .collect()
}

fn verdict(records: &[Vec<u8>]) -> ketenpost_audit::ChainVerdict {
    verify_exported(records.iter().map(Vec::as_slice))
}

#[test]
fn a_chain_built_record_by_record_verifies() {
    let records = chain(5);
    let v = verdict(&records);
    assert!(v.intact, "{v:?}");
    assert_eq!(v.records, 5);
    let first = parse_record(1, &records[0]).unwrap();
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert!(first.hash_is_valid().unwrap());
    let second = parse_record(2, &records[1]).unwrap();
    assert_eq!(second.prev_hash, first.hash);
}

#[test]
fn a_changed_byte_a_gap_a_swap_and_a_wrong_seq_are_each_found() {
    let records = chain(4);

    let mut edited = records.clone();
    let text = String::from_utf8(edited[2].clone()).unwrap();
    edited[2] = text.replace("signaal", "signaak").into_bytes();
    assert_eq!(verdict(&edited).first_broken, Some(3));

    let mut gap = records.clone();
    gap.remove(1);
    assert_eq!(verdict(&gap).first_broken, Some(2));

    let mut swapped = records.clone();
    swapped.swap(1, 2);
    assert_eq!(verdict(&swapped).first_broken, Some(2));

    // Stored under another seq than it says.
    assert!(parse_record(3, &records[1]).is_err());
    // Not JSON at all: a verdict, not a panic.
    let v = verdict(&[b"\xff\x00 not a record".to_vec()]);
    assert!(!v.intact);
    assert_eq!(v.first_broken, Some(1));
}

#[test]
fn seq_keys_sort_as_their_seqs() {
    let mut keys: Vec<[u8; 8]> = [300u64, 2, 1 << 40, 17]
        .iter()
        .map(|s| seq_key(*s))
        .collect();
    keys.sort();
    let seqs: Vec<u64> = keys.iter().map(|k| key_seq(k).unwrap()).collect();
    assert_eq!(seqs, [2, 17, 300, 1 << 40]);
    assert_eq!(key_seq(b"short"), None);
}

#[test]
fn a_checkpoint_verifies_under_its_key_only_and_orders_with_the_chain() {
    let key = keys::generate_signing_key();
    let other = keys::generate_signing_key();
    let records = chain(3);
    let head = parse_record(3, &records[2]).unwrap();
    let cp = Checkpoint::sign(&key, 3, head.hash.clone(), t0());
    cp.verify(&key.verifying_key()).unwrap();
    assert!(cp.verify(&other.verifying_key()).is_err());

    let stored = serde_json::to_vec(&cp).unwrap();
    assert_eq!(parse_checkpoint(3, &stored).unwrap(), cp);
    let damaged = parse_checkpoint(3, &stored[..stored.len() - 2]).unwrap_err();
    assert!(damaged.to_string().contains('3'), "{damaged}");

    let later = Checkpoint::sign(&key, 5, "ab".repeat(32), t0() + Duration::hours(1));
    assert!(later.extends(&cp));
    assert!(!cp.extends(&later));
    // The same seq with another hash: a rewritten trail.
    let forked = Checkpoint::sign(&key, 3, "cd".repeat(32), t0() + Duration::hours(2));
    assert!(!forked.extends(&cp));
}

#[test]
fn an_entry_refuses_what_could_carry_personal_data() {
    let free_text = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok)
        .actor(ACTOR)
        .case_ref("Jan de Vries, Dorpsstraat 1");
    assert!(free_text.validate().is_err());
    let not_an_oin = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok).actor("jan@example.org");
    assert!(not_an_oin.validate().is_err());
    let fine = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok)
        .actor(ACTOR)
        .case_ref("case-0123456789abcdefghijklmnop");
    fine.validate().unwrap();
}

#[test]
fn a_trail_given_as_stored_entries_is_checked_against_its_checkpoints() {
    type Entry = Result<(Vec<u8>, Vec<u8>), ketenpost_audit::AuditError>;
    let key = keys::generate_signing_key();
    let records = chain(4);
    let entries = |records: &[Vec<u8>]| -> Vec<Entry> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((seq_key(i as u64 + 1).to_vec(), r.clone())))
            .collect()
    };
    let at3 = parse_record(3, &records[2]).unwrap();
    let cp = Checkpoint::sign(&key, 3, at3.hash, t0());
    let cps =
        || -> Vec<Entry> { vec![Ok((seq_key(3).to_vec(), serde_json::to_vec(&cp).unwrap()))] };

    let report =
        ketenpost_audit::verify_trail(cps(), entries(&records), &key.verifying_key()).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.records, report.checkpoints), (4, 1));

    // The whole trail rebuilt from record 3 on: the chain holds, the checkpoint does not.
    let mut rewritten = records[..2].to_vec();
    let mut head = ChainHead::recover(Some((&seq_key(2), &records[1]))).unwrap();
    for i in 0..2 {
        let entry = AuditEntry::new(AuditEvent::Accepted, Outcome::Ok).actor(ACTOR);
        let (r, bytes) = head.next(entry, t0() + Duration::seconds(10 + i)).unwrap();
        head.advance(&r);
        rewritten.push(bytes);
    }
    let report =
        ketenpost_audit::verify_trail(cps(), entries(&rewritten), &key.verifying_key()).unwrap();
    assert_eq!(report.first_broken(), Some(3), "{report}");
    assert_eq!(
        report.problems[0].what,
        ketenpost_audit::ProblemKind::CheckpointMismatch
    );

    // A checkpoint signed by another key.
    let other = keys::generate_signing_key();
    let report =
        ketenpost_audit::verify_trail(cps(), entries(&records), &other.verifying_key()).unwrap();
    assert_eq!(
        report.problems[0].what,
        ketenpost_audit::ProblemKind::CheckpointBadSignature
    );
}

/// The stored JSON `ChainHead::next` gives (serialized once, the hash put in place) is
/// byte for byte what serializing the sealed record gives, and the hash is the record's
/// own, for records with none and with every optional field; sealing again changes
/// nothing.
#[test]
fn the_stored_json_of_a_record_is_its_serialization() {
    let bare = || AuditEntry::ok(AuditEvent::Checkpoint);
    let full = || {
        AuditEntry::new(AuditEvent::Accepted, Outcome::Ok)
            .actor(ACTOR)
            .user("user-7f3a")
            .case_ref("case-0123456789abcdefghijklmnop")
            .purpose("walcheren-uitstroom")
            .processing_activity("pa-12")
            .kind("signaal")
            .message_id("0190f3a4-1c2b-7d3e-8f40-123456789abc")
            .counterparty(PEER)
            .counterparty(ACTOR)
            .recipient_views(&[(PEER, "zorgaanbieder"), (ACTOR, "woningcorporatie")])
            .reason_explained("not_in_case_team", "the recipient is \"not\" in the team")
            .due_at(t0() + Duration::days(30))
            .document_serial(7)
            .broken_seq(3)
            .request_digest(b"request")
            .trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
    };
    let mut head = ChainHead::genesis();
    for (i, entry) in [bare(), full(), bare(), full()].into_iter().enumerate() {
        let (record, bytes) = head
            .next(entry, t0() + Duration::seconds(i as i64))
            .unwrap();
        assert_eq!(bytes, serde_json::to_vec(&record).unwrap(), "record {i}");
        assert!(record.hash_is_valid().unwrap(), "record {i}");
        // Sealing a sealed record replaces its hash with the same one.
        let (again, again_bytes) = record.clone().seal().unwrap();
        assert_eq!((&again, &again_bytes), (&record, &bytes), "record {i}");
        head.advance(&record);
    }
}

#[test]
fn rounds_hold_records_up_to_their_size_and_give_them_back_one_by_one() {
    let records = chain(12);
    let longest = records.iter().map(Vec::len).max().unwrap();
    // Rounds of at most three records' worth of bytes, and rounds smaller than a record.
    for max in [3 * longest + 2, longest / 2] {
        let mut rounds = Rounds::new(max);
        for (i, r) in records.iter().enumerate() {
            rounds.push(i as u64 + 1, r);
        }
        let entries: Vec<([u8; 8], Vec<u8>)> =
            rounds.entries().map(|(k, v)| (k, v.to_vec())).collect();
        let mut back = Vec::new();
        for (key, value) in &entries {
            // Within the size, or one record alone.
            assert!(value.len() <= max || round_len(value) == 1, "{max}");
            assert!(round_is_lines(value));
            for (seq, line) in round_records(key_seq(key).unwrap(), value) {
                assert_eq!(parse_record(seq, line).unwrap().seq, seq);
                back.push(line.to_vec());
            }
        }
        assert_eq!(back, records, "{max}");
        let expected = if max > longest { 4 } else { 12 };
        assert_eq!(entries.len(), expected, "{max}");
    }
    assert_eq!(Rounds::new(100).entries().count(), 0);
}

#[test]
fn a_record_damaged_into_several_lines_stays_one_record_of_its_round() {
    let records = chain(3);
    let pretty = serde_json::to_vec_pretty(
        &serde_json::from_slice::<serde_json::Value>(&records[1]).unwrap(),
    )
    .unwrap();
    let value = [records[0].clone(), pretty.clone(), records[2].clone()].join(&b'\n');
    let split: Vec<(u64, &[u8])> = round_records(7, &value).collect();
    assert_eq!(
        split,
        vec![(7, &records[0][..]), (8, &pretty[..]), (9, &records[2][..])]
    );
    assert_eq!(round_len(&value), 3);
    assert!(!round_is_lines(&value));
    // Garbage is one record, which does not parse.
    assert_eq!(round_records(1, b"").count(), 1);
    assert_eq!(
        round_records(1, b"}\n{").collect::<Vec<_>>(),
        vec![(1, &b"}"[..]), (2, &b"{"[..])]
    );
}
