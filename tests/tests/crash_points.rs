//! Kill the broker with SIGKILL at every write point, restart it, finish the scenario as
//! agents would (resend what had no answer, fetch again), and check what must hold:
//!
//! - every accepted message is receipted exactly once by each recipient;
//! - no receipted message is delivered again or expires;
//! - every message expires at most once per recipient, and only for recipients that never
//!   receipted it;
//! - each deadline notice and each deletion order exists once, with one order id per case,
//!   and every order can be confirmed;
//! - no byte of a receipted or expired body is left in the spool;
//! - `audit verify` passes, and each completed transition is recorded exactly once (the
//!   archiver moves records out of the database every 200 ms meanwhile, so the trail is
//!   read across the archive file and the database).
//!
//! The broker binary is built with the `failpoints` feature (see `tests/Cargo.toml`);
//! `KETENPOST_FAILPOINT=<op>.<stage>` makes it SIGKILL itself there
//! (`broker/src/failpoint.rs`). Time moves through a test clock file, never by sleeping:
//! the scenario passes an answer deadline (24 h), the undelivered TTL (7 days) and the
//! case retention (1 year) in seconds.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use ketenpost_audit::{AuditEvent, AuditRecord, Outcome};
use ketenpost_schemas::control::{
    CaseChange, CaseOp, DeadlineNotice, DeletionConfirmation, DeletionOrder, DeliveryReceipt,
    ExpiryNotice, Record, SignedRecord,
};
use ketenpost_schemas::envelope::LegalBasis;
use ketenpost_schemas::envelope::{Envelope, Limits};
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::Reactie;
use ketenpost_schemas::policy::Role;
use ketenpost_schemas::protocol::{envelope_from_b64, Delivery, RejectCode, Request, Response};
use ketenpost_schemas::seal::Draft;
use ketenpost_schemas::testdata::TEST_POLICY;
use ketenpost_tests::{
    case_with_consent, on_disk, signaal, BrokerProcess, Fed, PartyKeys, REQUEST_TIMEOUT,
};
use ketenpost_transport::client::Client;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// The broker, restarted without its crash point once it died at it.
struct Run {
    fed: Fed,
    data: PathBuf,
    clock_file: PathBuf,
    point: &'static str,
    broker: Option<BrokerProcess>,
    crashed: bool,
    /// Party index -> its keys and client.
    parties: Vec<(PartyKeys, Option<Client>)>,
}

impl Run {
    fn new(point: &'static str) -> Run {
        let fed = Fed::new(TEST_POLICY, None).unwrap();
        let data = fed.path("broker-data");
        let clock_file = fed.path("clock");
        std::fs::write(&clock_file, "0").unwrap();
        // Roster order: gemeente, woningcorporatie, zorgaanbieder.
        let parties = (0..3).map(|i| (fed.keys(i).unwrap(), None)).collect();
        let mut run = Run {
            fed,
            data,
            clock_file,
            point,
            broker: None,
            crashed: false,
            parties,
        };
        run.start(true);
        run
    }

    fn start(&mut self, armed: bool) {
        let fp = self.fed.path("failpoint-name");
        let mut env: Vec<(&str, &Path)> = vec![("KETENPOST_TEST_CLOCK_FILE", &self.clock_file)];
        let point_path = PathBuf::from(self.point);
        if armed {
            std::fs::write(&fp, self.point).unwrap();
            env.push(("KETENPOST_FAILPOINT", &point_path));
        }
        let broker = BrokerProcess::start_with(
            &self.fed,
            &self.data,
            "127.0.0.1:0".parse().unwrap(),
            &[
                "--sweep-interval-secs",
                "1",
                "--checkpoint-interval-secs",
                "1",
                "--audit-archive-ms",
                "200",
            ],
            &env,
        )
        .unwrap();
        self.broker = Some(broker);
        for p in &mut self.parties {
            p.1 = None;
        }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.as_ref().unwrap().addr
    }

    /// Move the brokers' clock to `secs` after the start.
    fn set_clock(&self, secs: i64) {
        std::fs::write(&self.clock_file, secs.to_string()).unwrap();
    }

    fn keys(&self, i: usize) -> &PartyKeys {
        &self.parties[i].0
    }

    async fn client(&mut self, i: usize) -> Result<&Client> {
        if self.parties[i].1.is_none() {
            let addr = self.addr();
            let c = self.parties[i].0.connect(addr).await?;
            self.parties[i].1 = Some(c);
        }
        Ok(self.parties[i].1.as_ref().unwrap())
    }

    /// The broker stopped answering: it must have died at its crash point. Restart it
    /// without one. Returns whether this was that crash.
    fn recover(&mut self) -> bool {
        let mut broker = self.broker.take().unwrap();
        let status = broker.wait_exit(Duration::from_secs(20)).unwrap();
        assert!(
            status.is_some(),
            "{}: the broker stopped answering but did not exit",
            self.point
        );
        assert!(
            !self.crashed,
            "{}: the broker died a second time",
            self.point
        );
        self.crashed = true;
        self.start(false);
        true
    }

    /// Send `req` as party `i`; after a crash at the point, restart and send it again.
    /// The second return is whether it was sent again after a crash.
    async fn request(&mut self, i: usize, req: &Request) -> (Response, bool) {
        let mut again = false;
        for _ in 0..2 {
            let sent = match self.client(i).await {
                Ok(c) => c
                    .request(req, REQUEST_TIMEOUT)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match sent {
                Ok(r) => return (r, again),
                Err(_) => {
                    again = self.recover();
                }
            }
        }
        panic!("{}: no answer after a restart", self.point)
    }
}

/// What the parties saw over the whole run.
#[derive(Default)]
struct Seen {
    accepted: BTreeSet<MessageId>,
    envelopes: BTreeMap<MessageId, Vec<u8>>,
    /// (message, party) whose receipt was answered `done`.
    receipted: BTreeSet<(MessageId, Oin)>,
    /// (message, recipient) -> expiry notices the sender got.
    expired: BTreeMap<(MessageId, Oin), usize>,
    /// (message, owed by, to) -> deadline notices.
    deadline: BTreeMap<(MessageId, Oin, Oin), usize>,
    /// party -> deletion orders it got.
    orders: BTreeMap<Oin, Vec<DeletionOrder>>,
    /// Notice seqs already handled, per party (a notice fetched again before its ack).
    handled: BTreeSet<(Oin, u64)>,
}

/// A notice the broker signed, verified with the directory's broker key.
fn record<R: Record>(run: &Run, rec: &SignedRecord) -> R {
    rec.verify(&run.fed.directory.broker_key().unwrap())
        .unwrap()
}

/// Fetch everything for party `i`: check every delivery against what must hold, receipt
/// messages when `receipt(id)` says so, record notices, ack them.
async fn fetch_all(run: &mut Run, seen: &mut Seen, i: usize, receipt: impl Fn(&MessageId) -> bool) {
    let me = run.keys(i).oin.clone();
    for _ in 0..20 {
        let (resp, _) = run
            .request(
                i,
                &Request::Fetch {
                    max: 64,
                    wait_ms: 0,
                    skip: Vec::new(),
                },
            )
            .await;
        let Response::Deliveries(items) = resp else {
            panic!("{}: fetch: {resp:?}", run.point)
        };
        if items.is_empty() {
            return;
        }
        let mut last_notice = None;
        let mut progress = false;
        for item in items {
            match item {
                Delivery::Message { envelope, .. } => {
                    let bytes = envelope_from_b64(&envelope).unwrap();
                    let env = Envelope::decode(&bytes, &Limits::default()).unwrap();
                    let h = env.unverified_header().unwrap();
                    let id = h.id;
                    assert!(
                        !seen.receipted.contains(&(id, me.clone())),
                        "{}: message {id} delivered to {me} again after its receipt",
                        run.point
                    );
                    assert!(
                        seen.accepted.contains(&id) || run.crashed,
                        "{}: a message never accepted was delivered",
                        run.point
                    );
                    if !receipt(&id) {
                        continue;
                    }
                    let sha = h.body_for(&me).unwrap().1.sha256.clone();
                    let r = DeliveryReceipt {
                        message_id: id,
                        recipient: me.clone(),
                        body_sha256: sha,
                        received_at: chrono::Utc::now(),
                    };
                    let rec = SignedRecord::sign(&r, me.clone(), &run.keys(i).key).unwrap();
                    let (resp, again) = run.request(i, &Request::Receipt(rec)).await;
                    match resp {
                        Response::Done => {}
                        // Sent again after a crash that came after the receipt was
                        // durable: the message is gone, so it is no longer queued.
                        Response::Rejected(r) if again && r.code == RejectCode::Conflict => {}
                        other => panic!("{}: receipt: {other:?}", run.point),
                    }
                    seen.receipted.insert((id, me.clone()));
                    progress = true;
                }
                Delivery::Notice { seq, record: rec } => {
                    last_notice = Some(seq);
                    if !seen.handled.insert((me.clone(), seq)) {
                        continue;
                    }
                    progress = true;
                    match rec.kind {
                        Kind::ExpiryNotice => {
                            let n: ExpiryNotice = record(run, &rec);
                            *seen.expired.entry((n.message_id, n.recipient)).or_default() += 1;
                        }
                        Kind::DeadlineNotice => {
                            let n: DeadlineNotice = record(run, &rec);
                            *seen
                                .deadline
                                .entry((n.message_id, n.owed_by, me.clone()))
                                .or_default() += 1;
                        }
                        Kind::DeletionOrder => {
                            let o: DeletionOrder = record(run, &rec);
                            seen.orders.entry(me.clone()).or_default().push(o);
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(up_to) = last_notice {
            let (resp, _) = run.request(i, &Request::Ack { up_to }).await;
            assert!(
                matches!(resp, Response::Done),
                "{}: ack: {resp:?}",
                run.point
            );
        }
        if !progress {
            return;
        }
    }
}

/// Poll (bounded) until `done` holds, fetching for every party; the sweep runs every
/// second.
async fn until(run: &mut Run, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let start = Instant::now();
    while !done(seen) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: {what} did not happen within 30 s",
            run.point
        );
        for i in 0..3 {
            fetch_all(run, seen, i, |_| false).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(point: &'static str) {
    let mut run = Run::new(point);
    let mut seen = Seen::default();
    let (gem, corp, zorg) = (0usize, 1usize, 2usize);

    // Control records: a case with the three parties, and a consent. Sent again after a
    // crash, a control record that was applied before it is refused as a conflict.
    let (case, consent) = loop {
        let (g, z) = (run.keys(gem), run.keys(zorg));
        let members = [
            (&run.keys(zorg).oin, "zorgaanbieder"),
            (&run.keys(corp).oin, "woningcorporatie"),
        ];
        let attempt = async {
            let (gc, zc) = (g.connect(run.addr()).await?, z.connect(run.addr()).await?);
            case_with_consent(
                "test",
                "uitstroom",
                (g, &gc, "gemeente"),
                &members,
                (z, &zc),
                &["gemeente", "zorgaanbieder", "woningcorporatie"],
            )
            .await
        };
        match attempt.await {
            Ok(done) => break done,
            // Died during set-up: start over with a new case on the restarted broker.
            Err(_) if !run.crashed => {
                run.recover();
            }
            Err(e) => panic!("{point}: set-up: {e}"),
        }
    };

    // Three signalen from the corporation to the zorgaanbieder and the gemeente.
    let to = [
        (&run.keys(zorg).oin.clone(), "zorgaanbieder"),
        (&run.keys(gem).oin.clone(), "gemeente"),
    ];
    for _ in 0..3 {
        let d = signaal(&case, consent, &[(to[0].0, to[0].1), (to[1].0, to[1].1)]).unwrap();
        let id = d.id;
        let bytes = run.fed.seal(run.keys(corp), d).unwrap();
        let (resp, again) = run.request(corp, &Request::Submit(bytes.clone())).await;
        match resp {
            Response::Accepted { message_id, .. } => assert_eq!(message_id, id),
            Response::Rejected(r) if again && r.code == RejectCode::Replay => {}
            other => panic!("{point}: submit: {other:?}"),
        }
        seen.accepted.insert(id);
        seen.envelopes.insert(id, bytes);
    }
    let ids: Vec<MessageId> = seen.accepted.iter().copied().collect();

    // The zorgaanbieder receipts all three; the gemeente only the first.
    let first = ids[0];
    fetch_all(&mut run, &mut seen, zorg, |_| true).await;
    fetch_all(&mut run, &mut seen, gem, |id| *id == first).await;
    for id in &ids {
        assert!(
            seen.receipted.contains(&(*id, run.keys(zorg).oin.clone())),
            "{point}: zorg receipt of {id}"
        );
    }

    // The zorgaanbieder answers the first in time: it owes no answer to that one any more.
    let mut reactie = Draft::new(
        "uitstroom",
        Kind::Reactie,
        case.clone(),
        vec![(run.keys(corp).oin.clone(), Role::new("woningcorporatie"))],
        LegalBasis::Consent {
            consent_id: consent,
        },
        serde_json::to_value(Reactie::example()).unwrap(),
    );
    reactie.in_reply_to = Some(first);
    let reactie_id = reactie.id;
    let bytes = run.fed.seal(run.keys(zorg), reactie).unwrap();
    let (resp, again) = run.request(zorg, &Request::Submit(bytes.clone())).await;
    match resp {
        Response::Accepted { .. } => {}
        Response::Rejected(r) if again && r.code == RejectCode::Replay => {}
        other => panic!("{point}: reactie: {other:?}"),
    }
    seen.accepted.insert(reactie_id);
    seen.envelopes.insert(reactie_id, bytes);
    fetch_all(&mut run, &mut seen, corp, |_| true).await;
    assert!(
        seen.receipted
            .contains(&(reactie_id, run.keys(corp).oin.clone())),
        "{point}: the corporation's receipt of the reactie"
    );

    // 25 hours on: the answers (24 h from each receipt) are overdue.
    run.set_clock(25 * HOUR);
    let (zorg_oin, gem_oin) = (run.keys(zorg).oin.clone(), run.keys(gem).oin.clone());
    let expect_deadline: Vec<(MessageId, Oin)> = ids[1..]
        .iter()
        .map(|id| (*id, zorg_oin.clone()))
        .chain([(first, gem_oin.clone())])
        .collect();
    until(&mut run, &mut seen, "deadline notices", |s| {
        expect_deadline
            .iter()
            .all(|(id, owed)| s.deadline.contains_key(&(*id, owed.clone(), owed.clone())))
    })
    .await;

    // 8 days on: the two the gemeente never receipted expire.
    run.set_clock(8 * DAY);
    until(&mut run, &mut seen, "expiry notices", |s| {
        ids[1..]
            .iter()
            .all(|id| s.expired.contains_key(&(*id, gem_oin.clone())))
    })
    .await;

    // The case closes; a year and two days on, every party is ordered to delete it.
    let close = CaseChange {
        case_ref: case.clone(),
        covenant: "test".into(),
        purpose: "uitstroom".into(),
        change: CaseOp::Close,
        by: gem_oin.clone(),
        at: chrono::Utc::now(),
    };
    let rec = SignedRecord::sign(&close, gem_oin.clone(), &run.keys(gem).key).unwrap();
    let (resp, again) = run.request(gem, &Request::Control(rec)).await;
    assert!(
        matches!(resp, Response::Done) || (again && matches!(&resp, Response::Rejected(_))),
        "{point}: close: {resp:?}"
    );
    run.set_clock(8 * DAY + 367 * DAY);
    until(&mut run, &mut seen, "deletion orders", |s| {
        s.orders.len() == 3
    })
    .await;
    for i in 0..3 {
        let oin = run.keys(i).oin.clone();
        let order = seen.orders[&oin][0].clone();
        let conf = DeletionConfirmation {
            order_id: order.order_id,
            case_ref: case.clone(),
            party: oin.clone(),
            deleted_messages: 0,
            deleted_at: chrono::Utc::now(),
        };
        let rec = SignedRecord::sign(&conf, oin, &run.keys(i).key).unwrap();
        let (resp, again) = run.request(i, &Request::Control(rec)).await;
        assert!(
            matches!(resp, Response::Done) || (again && matches!(&resp, Response::Rejected(_))),
            "{point}: confirmation: {resp:?}"
        );
    }
    // A checkpoint after everything (the timer makes one every second), and an archiver
    // pass (every 200 ms): the crash points that timers reach.
    let start = Instant::now();
    let timed = ["checkpoint", "archive", "direct"];
    while !run.crashed && timed.iter().any(|t| point.starts_with(t)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{point}: the timer never reached it"
        );
        let (_, _) = run.request(gem, &Request::GetCheckpoint).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever is still queued now is delivered, and checked, once more.
    for i in 0..3 {
        fetch_all(&mut run, &mut seen, i, |_| false).await;
    }
    assert!(
        run.crashed,
        "{point}: the broker never reached its crash point"
    );

    // Stop cleanly, then look at what is on disk.
    let status = run.broker.take().unwrap().terminate().unwrap();
    assert!(status.success(), "{point}: clean stop: {status:?}");
    check_disk(&run, &seen, &case, &ids, reactie_id, point);
}

fn check_disk(
    run: &Run,
    seen: &Seen,
    case: &CaseRef,
    ids: &[MessageId],
    reactie: MessageId,
    point: &str,
) {
    let (gem, corp, zorg) = (
        run.keys(0).oin.clone(),
        run.keys(1).oin.clone(),
        run.keys(2).oin.clone(),
    );
    // Expiry: the gemeente's two unreceipted messages, once each, and nothing else.
    let want: BTreeMap<(MessageId, Oin), usize> =
        ids[1..].iter().map(|id| ((*id, gem.clone()), 1)).collect();
    assert_eq!(seen.expired, want, "{point}: expiry notices");
    // Deadline notices: once per (message, owed by, party told).
    assert!(
        seen.deadline.values().all(|n| *n == 1),
        "{point}: a deadline notice twice"
    );
    // One deletion order per party, all with the case's one order id.
    let order_ids: BTreeSet<uuid::Uuid> = seen
        .orders
        .values()
        .flat_map(|os| os.iter().map(|o| o.order_id))
        .collect();
    assert_eq!(
        order_ids.len(),
        1,
        "{point}: deletion order ids {order_ids:?}"
    );
    assert!(
        seen.orders.values().all(|os| os.len() == 1),
        "{point}: an order twice"
    );
    assert!(seen.orders.values().all(|os| &os[0].case_ref == case));

    // No byte of any body is left: all were receipted or expired.
    for (id, bytes) in &seen.envelopes {
        assert!(
            !on_disk(&run.data.join("spool"), bytes),
            "{point}: the body of {id} is still in the spool"
        );
    }

    // The audit trail verifies, and each completed transition is in it once.
    let db = sled::open(run.data.join("broker.sled")).unwrap();
    let broker_key = ketenpost_schemas::keys::signing_key_from_text(
        &std::fs::read_to_string(&run.fed.files.broker.signing_key).unwrap(),
    )
    .unwrap()
    .verifying_key();
    let archive = ketenpost_broker::audit::archive_dir(&run.data);
    let report = ketenpost_broker::audit::verify_chain(&db, &archive, &broker_key).unwrap();
    assert!(report.is_intact(), "{point}: audit verify: {report}");
    let records: Vec<AuditRecord> = ketenpost_broker::audit::stored_records(&db, &archive).unwrap();
    let count = |event: AuditEvent, f: &dyn Fn(&AuditRecord) -> bool| {
        records
            .iter()
            .filter(|r| r.event == event && r.outcome != Outcome::Refused && f(r))
            .count()
    };
    let of = |r: &AuditRecord, id: &MessageId| r.message_id.as_deref() == Some(&id.to_string());
    let by = |r: &AuditRecord, o: &Oin| r.actor.as_deref() == Some(o.as_str());
    let to = |r: &AuditRecord, o: &Oin| r.counterparties.iter().any(|c| c == o.as_str());
    for id in ids {
        assert_eq!(
            count(AuditEvent::Accepted, &|r| of(r, id)),
            1,
            "{point}: accepted {id}"
        );
        assert_eq!(
            count(AuditEvent::Receipt, &|r| of(r, id) && by(r, &zorg)),
            1,
            "{point}: zorg receipt {id}"
        );
        // Every receipt has its delivery on record, once: written at the first fetch, or
        // with the receipt when a crash lost that record.
        assert_eq!(
            count(AuditEvent::Delivered, &|r| of(r, id) && by(r, &zorg)),
            1,
            "{point}: zorg delivered {id}"
        );
        assert_eq!(
            count(AuditEvent::BodyDeleted, &|r| of(r, id)),
            1,
            "{point}: body deleted {id}"
        );
        let gem_receipts = count(AuditEvent::Receipt, &|r| of(r, id) && by(r, &gem));
        assert!(
            count(AuditEvent::Delivered, &|r| of(r, id) && by(r, &gem)) >= gem_receipts,
            "{point}: a gemeente receipt of {id} without its delivery"
        );
        assert!(
            count(AuditEvent::Delivered, &|r| of(r, id) && by(r, &gem)) <= 1,
            "{point}: gemeente delivered {id} twice"
        );
        let gem_expired = count(AuditEvent::Expired, &|r| of(r, id) && to(r, &gem));
        assert_eq!(gem_receipts + gem_expired, 1, "{point}: gemeente and {id}");
        assert_eq!(
            gem_receipts,
            usize::from(*id == ids[0]),
            "{point}: gemeente receipts {id}"
        );
    }
    for p in [&gem, &corp, &zorg] {
        assert_eq!(
            count(AuditEvent::DeletionOrdered, &|r| to(r, p)),
            1,
            "{point}: order for {p}"
        );
        assert_eq!(
            count(AuditEvent::DeletionConfirmed, &|r| by(r, p)),
            1,
            "{point}: confirmation by {p}"
        );
    }
    for (id, owed, _) in seen.deadline.keys() {
        assert_eq!(
            count(AuditEvent::DeadlineLate, &|r| of(r, id) && by(r, owed)),
            1,
            "{point}: answer overdue {id} by {owed}"
        );
    }
    assert_eq!(
        count(AuditEvent::CaseClosed, &|_| true),
        1,
        "{point}: case closed"
    );
    // The answer: accepted and receipted once, and the first signal's answer clock knew it,
    // so the zorgaanbieder was never told it was overdue for that one.
    assert_eq!(
        count(AuditEvent::Accepted, &|r| of(r, &reactie)),
        1,
        "{point}: reactie"
    );
    assert_eq!(
        count(AuditEvent::Receipt, &|r| of(r, &reactie) && by(r, &corp)),
        1,
        "{point}: reactie receipt"
    );
    assert!(
        !seen
            .deadline
            .contains_key(&(ids[0], zorg.clone(), zorg.clone())),
        "{point}: a deadline notice for an answered signal"
    );
    assert_eq!(
        count(AuditEvent::DeadlineLate, &|r| of(r, &ids[0])
            && by(r, &zorg)),
        0,
        "{point}: answered in time, yet overdue"
    );
}

/// Whether the file system of `dir` takes direct writes (the audit archive's appends).
fn direct_writes_in(dir: &Path) -> bool {
    let probe = tempfile::NamedTempFile::new_in(dir).unwrap();
    ketenpost_broker::direct::DirectAppend::open(probe.path()).is_some()
}

macro_rules! crash_at {
    ($($name:ident => $point:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let features = std::process::Command::new(
                    ketenpost_tests::binary("ketenpost-broker").unwrap(),
                )
                .arg("features")
                .output()
                .unwrap();
                assert!(
                    String::from_utf8_lossy(&features.stdout).contains("failpoints"),
                    "the broker binary was built without the failpoints feature: run \
                     `cargo test --workspace`, which builds it with the end-to-end tests' features"
                );
                if $point.starts_with("direct.")
                    && !direct_writes_in(&std::env::temp_dir())
                {
                    eprintln!(
                        "skipped: the temporary directory's file system has no direct \
                         writes, so the broker never reaches {}",
                        $point
                    );
                    return;
                }
                scenario($point).await;
            }
        )*
    };
}

crash_at! {
    crash_after_a_submit_is_applied => "submit.applied",
    crash_after_a_submit_is_written_to_the_log => "submit.written",
    crash_after_a_submit_is_durable => "submit.durable",
    crash_after_a_first_fetch_is_applied => "fetch.applied",
    crash_after_a_receipt_is_applied => "receipt.applied",
    crash_after_a_receipt_is_written_to_the_log => "receipt.written",
    crash_after_a_receipt_is_durable => "receipt.durable",
    crash_after_deadline_notices_are_applied => "deadline.applied",
    crash_after_deadline_notices_are_durable => "deadline.durable",
    crash_after_an_expiry_is_applied => "expire.applied",
    crash_after_an_expiry_is_durable => "expire.durable",
    crash_after_a_case_change_is_applied => "case.applied",
    crash_after_a_case_change_is_durable => "case.durable",
    crash_after_a_consent_is_applied => "consent.applied",
    crash_after_a_consent_is_durable => "consent.durable",
    crash_after_a_deletion_confirmation_is_applied => "confirmation.applied",
    crash_after_a_deletion_confirmation_is_durable => "confirmation.durable",
    crash_after_deletion_orders_are_applied => "deletion.applied",
    crash_after_deletion_orders_are_durable => "deletion.durable",
    crash_after_a_checkpoint_is_applied => "checkpoint.applied",
    crash_after_a_checkpoint_is_durable => "checkpoint.durable",
    crash_after_an_answer_is_applied => "answer.applied",
    crash_after_an_answer_is_written_to_the_log => "answer.written",
    crash_after_an_answer_is_durable => "answer.durable",
    crash_after_audit_records_are_appended_to_the_archive => "archive.appended",
    crash_after_audit_records_are_archived => "archive.applied",
    crash_after_audit_records_are_written_around_the_page_cache => "direct.written",
}
