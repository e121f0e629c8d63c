//! The covenant's deadlines, as pure functions of (policy terms, message state, now).
//!
//! Two kinds of deadline exist (DESIGN.md, "The covenant as code"):
//!
//! - **`send_within`**, counted from the event in the header (observed-at of a signal,
//!   discovered-at of a breach) to the broker's acceptance. Check 7 computes it
//!   ([`crate::checks::check_message`]); a message that arrives after it is accepted,
//!   flagged [`AcceptFlag::Late`](ketenpost_schemas::protocol::AcceptFlag::Late) and audited
//!   as `deadline_late` with reason `late_on_arrival`. [`is_late`] is the one comparison
//!   both deadlines use.
//! - **`answer_within`**, counted from the delivery of a message to each recipient until
//!   that recipient answers it. Delivered means receipted: the recipient's signed receipt
//!   says its agent verified, decrypted and stored the message (a fetch alone proves
//!   nothing; the agent may have refused what it got). A message that expires before a
//!   recipient receipts it was never delivered to that recipient, so it owes no answer;
//!   the sender gets an expiry notice instead. An [`AnswerClock`] follows one message: for every recipient
//!   it holds when the message was delivered to it, whether and when it answered, and
//!   whether the broker already sent the deadline notice. The broker keeps clocks in the
//!   sled tree `deadlines` (see `ketenpost_broker::store`), so they outlive the message body, which
//!   is deleted as soon as every recipient receipted it.
//!
//! A message may also carry an **answer request** (the header's
//! [`AnswerRequest`]): its sender asks the recipients in some roles (all, by default) to
//! answer by a due date, which the policy bounds per kind (`answer_request_max`, checked
//! by [`crate::checks`]). Those recipients owe an answer by that date, once the message
//! was delivered to them; a recipient that also owes one under the kind's standing
//! `answer_within` owes it by the earlier of the two. Everything else (who answers, the
//! notices, late answers) is the same for both.
//!
//! # What counts as an answer
//! A message `M` answers message `X` for recipient `R` when `M.in_reply_to == X`, `M`'s kind
//! is one of the `answer_kinds` of `X`'s kind rule, and `M`'s sender is `R`, a recipient of
//! `X`. Only the first answer of each recipient counts.
//!
//! # When a deadline has passed
//! A deadline is an instant. Something that happens *at* the deadline is in time; only what
//! happens strictly after it is late ([`is_late`]): a signal accepted exactly 48 hours after
//! its observation is in time, one second later it is late. Workday deadlines are the first
//! instant of the day after the last workday (see
//! [`Calendar::add_workdays`](ketenpost_schemas::calendar::Calendar::add_workdays)), so an
//! answer at 23:59:59 on the last workday is in time.
//!
//! # Who gets a deadline notice
//! When an answer is overdue the broker sends one [`DeadlineNotice`] per (message, party
//! that owes the answer), to: the party that owes it, the sender of the message and the
//! regievoerder of the case, each once even when one party is several of these
//! ([`notice_recipients`]). The clock remembers the notice, so it is never sent twice; a
//! late answer after the notice is still recorded (audited as `deadline_late`,
//! `answer_late`).
//!
//! [`DeadlineNotice`]: ketenpost_schemas::control::DeadlineNotice

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ketenpost_schemas::calendar::Calendar;
use ketenpost_schemas::duration::PolicyDuration;
use ketenpost_schemas::envelope::AnswerRequest;
use ketenpost_schemas::ids::{CaseRef, MessageId, Oin};
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::policy::KindRule;
use serde::{Deserialize, Serialize};

use crate::message::MessageMeta;

/// Whether something that happened at `at` missed `deadline`: only strictly after it.
pub fn is_late(deadline: DateTime<Utc>, at: DateTime<Utc>) -> bool {
    at > deadline
}

/// The answer deadlines of one accepted message, one entry per recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerClock {
    /// The message that waits for answers.
    pub message_id: MessageId,
    /// Its case (the regievoerder is looked up when a notice is due).
    pub case_ref: CaseRef,
    /// Its purpose.
    pub purpose: String,
    /// Its kind.
    pub kind: Kind,
    /// Its sender, who is told when an answer is overdue.
    pub sender: Oin,
    /// When the broker accepted it.
    pub accepted_at: DateTime<Utc>,
    /// The standing term, as the policy said when the message was accepted (a later
    /// policy does not move a running deadline); `None` when only an answer request binds.
    pub answer_within: Option<PolicyDuration>,
    /// The kinds that count as an answer.
    pub answer_kinds: BTreeSet<Kind>,
    /// What each recipient owes.
    pub owed: BTreeMap<Oin, Owed>,
}

/// What one recipient owes on one message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    /// When the recipient receipted the message; its clock starts here.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Its first answer.
    pub answered: Option<Answer>,
    /// When the broker sent the deadline notice for it.
    pub notified_at: Option<DateTime<Utc>>,
    /// The due date of the message's answer request, when it binds this recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<DateTime<Utc>>,
    /// Only the answer request binds this recipient, not the kind's standing
    /// `answer_within` (its role is not in `answer_by`, or the kind has no such term).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_only: bool,
}

/// An answer that was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The answering message.
    pub message_id: MessageId,
    /// When the broker accepted it.
    pub at: DateTime<Utc>,
}

/// A message as far as answering is concerned.
#[derive(Clone, Copy, Debug)]
pub struct Reply<'a> {
    /// Its id.
    pub id: MessageId,
    /// Its sender.
    pub sender: &'a Oin,
    /// Its kind.
    pub kind: Kind,
    /// The message it refers to.
    pub in_reply_to: Option<MessageId>,
}

/// An answer the clock recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The recipient that answered.
    pub by: Oin,
    /// The sender of the message answered, to whom the answer was owed.
    pub owed_to: Oin,
    /// Its deadline, when the message had been delivered to it.
    pub deadline: Option<DateTime<Utc>>,
    /// Whether the answer came after that deadline.
    pub late: bool,
}

/// An answer that is overdue and not yet notified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overdue {
    /// The party that owes the answer.
    pub owed_by: Oin,
    /// The deadline that passed.
    pub deadline: DateTime<Utc>,
}

impl AnswerClock {
    /// A clock for an accepted message of a kind whose rule has an `answer_within`, owed
    /// by every recipient; `None` when the rule sets no answer term.
    pub fn start(msg: &MessageMeta, rule: &KindRule) -> Option<AnswerClock> {
        AnswerClock::start_for(msg, rule, &[])
    }

    /// [`AnswerClock::start`] knowing each recipient's role in the message: when the
    /// policy names the roles that owe an answer (`answer_by`), only recipients in one of
    /// them owe one; no clock when none does.
    pub fn start_for(
        msg: &MessageMeta,
        rule: &KindRule,
        roles: &[(Oin, ketenpost_schemas::policy::Role)],
    ) -> Option<AnswerClock> {
        AnswerClock::start_with(msg, rule, roles, None)
    }

    /// [`AnswerClock::start_for`] with the message's answer request, if it carries one
    /// (checked against the policy before): the recipients in its roles (every recipient
    /// when it names none) owe an answer by its due date too. No clock when nobody owes
    /// anything.
    pub fn start_with(
        msg: &MessageMeta,
        rule: &KindRule,
        roles: &[(Oin, ketenpost_schemas::policy::Role)],
        request: Option<&AnswerRequest>,
    ) -> Option<AnswerClock> {
        let in_roles = |r: &Oin, wanted: &[&ketenpost_schemas::policy::Role]| {
            wanted.is_empty()
                || roles
                    .iter()
                    .any(|(o, role)| o == r && wanted.contains(&role))
        };
        let answer_by: Vec<_> = rule.answer_by.iter().collect();
        let standing = |r: &Oin| rule.answer_within.is_some() && in_roles(r, &answer_by);
        let requested = |r: &Oin| {
            request.and_then(|q| {
                let by: Vec<_> = q.by.iter().collect();
                in_roles(r, &by).then_some(q.due)
            })
        };
        let owed: BTreeMap<Oin, Owed> = msg
            .recipients
            .iter()
            .filter_map(|r| {
                let (standing, requested_by) = (standing(r), requested(r));
                (standing || requested_by.is_some()).then(|| {
                    (
                        r.clone(),
                        Owed {
                            requested_by,
                            request_only: !standing,
                            ..Owed::default()
                        },
                    )
                })
            })
            .collect();
        if owed.is_empty() {
            return None;
        }
        Some(AnswerClock {
            message_id: msg.id,
            case_ref: msg.case_ref.clone(),
            purpose: msg.purpose.clone(),
            kind: msg.kind,
            sender: msg.sender.clone(),
            accepted_at: msg.accepted_at,
            answer_within: rule.answer_within,
            answer_kinds: rule.answer_kinds.clone(),
            owed,
        })
    }

    /// The deadline of `party`: `answer_within` after the message was delivered to it, or
    /// the due date of the message's answer request, whichever is earlier (each where it
    /// binds the party). `None` before delivery, or when the party owes nothing. A request
    /// whose due date passed before the message was delivered is overdue at once.
    pub fn deadline(&self, party: &Oin, calendar: &Calendar) -> Option<DateTime<Utc>> {
        let owed = self.owed.get(party)?;
        let delivered = owed.delivered_at?;
        let standing = self
            .answer_within
            .filter(|_| !owed.request_only)
            .map(|w| w.deadline(delivered, calendar));
        match (standing, owed.requested_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Record the delivery (the receipt) to `party`. Returns whether the clock changed (a
    /// second delivery of the same message does not restart it).
    pub fn delivered(&mut self, party: &Oin, at: DateTime<Utc>) -> bool {
        match self.owed.get_mut(party) {
            Some(o) if o.delivered_at.is_none() => {
                o.delivered_at = Some(at);
                true
            }
            _ => false,
        }
    }

    /// Record `reply` if it answers this message (see the module docs), accepted at `at`.
    /// Returns what was recorded, or `None` when it is no answer (another message, a kind
    /// that does not count, a sender that owes nothing, or a second answer).
    pub fn answer(
        &mut self,
        reply: Reply<'_>,
        at: DateTime<Utc>,
        calendar: &Calendar,
    ) -> Option<Answered> {
        if reply.in_reply_to != Some(self.message_id) || !self.answer_kinds.contains(&reply.kind) {
            return None;
        }
        let deadline = self.deadline(reply.sender, calendar);
        let owed = self.owed.get_mut(reply.sender)?;
        if owed.answered.is_some() {
            return None;
        }
        owed.answered = Some(Answer {
            message_id: reply.id,
            at,
        });
        Some(Answered {
            by: reply.sender.clone(),
            owed_to: self.sender.clone(),
            deadline,
            late: deadline.is_some_and(|d| is_late(d, at)),
        })
    }

    /// The answers that are overdue at `now` and for which no notice was sent yet.
    pub fn overdue(&self, calendar: &Calendar, now: DateTime<Utc>) -> Vec<Overdue> {
        self.owed
            .iter()
            .filter(|(_, o)| o.answered.is_none() && o.notified_at.is_none())
            .filter_map(|(party, _)| {
                let deadline = self.deadline(party, calendar)?;
                is_late(deadline, now).then(|| Overdue {
                    owed_by: party.clone(),
                    deadline,
                })
            })
            .collect()
    }

    /// Remember that the notice for `party` was sent at `now`. Returns whether it was new.
    pub fn mark_notified(&mut self, party: &Oin, now: DateTime<Utc>) -> bool {
        match self.owed.get_mut(party) {
            Some(o) if o.notified_at.is_none() => {
                o.notified_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The message expired before these recipients receipted it: they never got it, so they
    /// owe nothing (the sender got an expiry notice instead).
    pub fn drop_undelivered<'a>(&mut self, parties: impl IntoIterator<Item = &'a Oin>) {
        for p in parties {
            if self.owed.get(p).is_some_and(|o| o.delivered_at.is_none()) {
                self.owed.remove(p);
            }
        }
    }

    /// Whether nothing is left to watch: every recipient that owes an answer gave it.
    /// A settled clock can be forgotten.
    pub fn is_settled(&self) -> bool {
        self.owed.values().all(|o| o.answered.is_some())
    }
}

/// Who gets the notice that `owed_by` did not answer in time: that party, the message's
/// sender and the case's regievoerder (when known), each once.
pub fn notice_recipients(
    clock: &AnswerClock,
    owed_by: &Oin,
    regievoerder: Option<&Oin>,
) -> BTreeSet<Oin> {
    [Some(owed_by), Some(&clock.sender), regievoerder]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// A notice the broker owes: one per overdue (message, party).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueNotice {
    /// The message that waits.
    pub message_id: MessageId,
    /// The party that owes the answer.
    pub owed_by: Oin,
    /// The deadline that passed.
    pub deadline: DateTime<Utc>,
    /// Who is told.
    pub to: BTreeSet<Oin>,
}

/// Every notice due at `now` for one clock, marking them sent in the clock. The caller
/// persists the clock together with the notices it queues, so each is sent once.
pub fn take_due(
    clock: &mut AnswerClock,
    calendar: &Calendar,
    now: DateTime<Utc>,
    regievoerder: Option<&Oin>,
) -> Vec<DueNotice> {
    let due = clock.overdue(calendar, now);
    let mut out = Vec::with_capacity(due.len());
    for o in due {
        if clock.mark_notified(&o.owed_by, now) {
            out.push(DueNotice {
                message_id: clock.message_id,
                to: notice_recipients(clock, &o.owed_by, regievoerder),
                owed_by: o.owed_by,
                deadline: o.deadline,
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use ketenpost_schemas::policy::Policy;

    fn oin(n: u64) -> Oin {
        format!("{n:020}").parse().unwrap()
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn rule(within: &str) -> KindRule {
        let policy = Policy::from_toml(ketenpost_schemas::testdata::TEST_POLICY).unwrap();
        let mut r = policy.rule("uitstroom", Kind::Signaal).unwrap().clone();
        r.answer_within = Some(within.parse().unwrap());
        r
    }

    /// A signal from 3 to `to`, accepted at `at`.
    fn meta(to: &[u64], at: DateTime<Utc>) -> MessageMeta {
        let recipients: BTreeSet<Oin> = to.iter().map(|n| oin(*n)).collect();
        MessageMeta {
            id: MessageId::new(),
            sender: oin(3),
            case_ref: CaseRef::random(),
            purpose: "uitstroom".into(),
            kind: Kind::Signaal,
            accepted_at: at,
            expires_at: at + Duration::days(7),
            pending: recipients.clone(),
            fetched: BTreeSet::new(),
            recipients,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            body_at: None,
            queue_seqs: Default::default(),
            views: Default::default(),
        }
    }

    /// A signal from 3 to 1 and 2, accepted at `at` and delivered to both at `at`.
    fn clock(within: &str, at: DateTime<Utc>) -> AnswerClock {
        let mut c = AnswerClock::start(&meta(&[1, 2], at), &rule(within)).unwrap();
        assert!(c.delivered(&oin(1), at));
        assert!(c.delivered(&oin(2), at));
        c
    }

    fn cal() -> Calendar {
        Calendar::dutch()
    }

    fn reply<'a>(c: &AnswerClock, from: &'a Oin) -> Reply<'a> {
        Reply {
            id: MessageId::new(),
            sender: from,
            kind: Kind::Reactie,
            in_reply_to: Some(c.message_id),
        }
    }

    fn overdue_parties(c: &AnswerClock, now: DateTime<Utc>) -> Vec<Oin> {
        c.overdue(&cal(), now)
            .into_iter()
            .map(|o| o.owed_by)
            .collect()
    }

    #[test]
    fn a_kind_without_answer_term_has_no_clock() {
        let mut r = rule("24 hours");
        r.answer_within = None;
        let c = AnswerClock::start(&meta(&[1], Utc::now()), &r);
        assert!(c.is_none());
    }

    #[test]
    fn exactly_at_the_deadline_is_in_time_one_second_later_is_late() {
        let t = utc(2025, 3, 4, 9, 0); // a Tuesday
        let c = clock("48 hours", t);
        let deadline = t + Duration::hours(48);
        assert_eq!(c.deadline(&oin(1), &cal()), Some(deadline));
        assert!(overdue_parties(&c, deadline).is_empty());
        assert_eq!(
            overdue_parties(&c, deadline + Duration::seconds(1)),
            vec![oin(1), oin(2)]
        );
        assert!(!is_late(deadline, deadline));
        assert!(is_late(deadline, deadline + Duration::milliseconds(1)));
        // An answer exactly at the deadline is in time.
        let mut c = c;
        let a = c.answer(reply(&c, &oin(1)), deadline, &cal()).unwrap();
        assert!(!a.late);
        let a = c
            .answer(reply(&c, &oin(2)), deadline + Duration::seconds(1), &cal())
            .unwrap();
        assert!(a.late);
        assert_eq!(a.deadline, Some(deadline));
    }

    #[test]
    fn hours_run_through_the_weekend() {
        // Friday 7 March 2025, 16:00 local (15:00 UTC): 24 hours ends on Saturday.
        let t = utc(2025, 3, 7, 15, 0);
        let c = clock("24 hours", t);
        assert_eq!(c.deadline(&oin(1), &cal()), Some(utc(2025, 3, 8, 15, 0)));
    }

    #[test]
    fn workdays_skip_the_weekend() {
        // Delivered Friday 7 March 2025 10:00 local; 2 workdays are Monday and Tuesday, so
        // the deadline is Wednesday 12 March 00:00 local = Tuesday 23:00 UTC (winter time).
        let t = utc(2025, 3, 7, 9, 0);
        let c = clock("2 workdays", t);
        let deadline = utc(2025, 3, 11, 23, 0);
        assert_eq!(c.deadline(&oin(1), &cal()), Some(deadline));
        // Monday evening, Tuesday 23:59 local: in time.
        assert!(overdue_parties(&c, utc(2025, 3, 10, 20, 0)).is_empty());
        assert!(overdue_parties(&c, utc(2025, 3, 11, 22, 59)).is_empty());
        assert!(overdue_parties(&c, deadline).is_empty());
        assert_eq!(
            overdue_parties(&c, deadline + Duration::seconds(1)).len(),
            2
        );
    }

    #[test]
    fn workdays_skip_easter() {
        // Delivered Thursday 2 April 2026 10:00 local (08:00 UTC, summer time). Goede
        // Vrijdag 3 April and Tweede Paasdag 6 April are no workdays, nor the weekend, so
        // 2 workdays are Tuesday 7 and Wednesday 8 April: the deadline is Thursday 9 April
        // 00:00 local = 8 April 22:00 UTC.
        let t = utc(2026, 4, 2, 8, 0);
        let c = clock("2 workdays", t);
        let deadline = utc(2026, 4, 8, 22, 0);
        assert_eq!(c.deadline(&oin(1), &cal()), Some(deadline));
        // Over Easter, nothing is overdue although 4 calendar days passed.
        assert!(overdue_parties(&c, utc(2026, 4, 6, 21, 0)).is_empty());
        assert!(overdue_parties(&c, deadline).is_empty());
        assert_eq!(
            overdue_parties(&c, deadline + Duration::seconds(1)).len(),
            2
        );
        // In hours, Easter does not count.
        let c = clock("48 hours", t);
        assert_eq!(c.deadline(&oin(1), &cal()), Some(utc(2026, 4, 4, 8, 0)));
    }

    #[test]
    fn the_clock_starts_at_delivery_not_acceptance() {
        let t = utc(2025, 3, 4, 9, 0);
        let mut c = AnswerClock::start(&meta(&[1], t), &rule("24 hours")).unwrap();
        // Never delivered: never overdue.
        assert!(overdue_parties(&c, t + Duration::days(30)).is_empty());
        assert!(c.delivered(&oin(1), t + Duration::hours(10)));
        // A second fetch does not restart it.
        assert!(!c.delivered(&oin(1), t + Duration::hours(20)));
        assert!(overdue_parties(&c, t + Duration::hours(34)).is_empty());
        assert_eq!(
            overdue_parties(&c, t + Duration::hours(34) + Duration::seconds(1)),
            vec![oin(1)]
        );
        // A party that is no recipient owes nothing.
        assert!(!c.delivered(&oin(9), t));
    }

    #[test]
    fn only_a_real_answer_stops_the_clock() {
        let t = utc(2025, 3, 4, 9, 0);
        let mut c = clock("24 hours", t);
        let (one, two, nine) = (oin(1), oin(2), oin(9));
        // Wrong kind, wrong message, not a recipient: no answer.
        let mut r = reply(&c, &one);
        r.kind = Kind::Signaal;
        assert!(c.answer(r, t, &cal()).is_none());
        let mut r = reply(&c, &one);
        r.in_reply_to = Some(MessageId::new());
        assert!(c.answer(r, t, &cal()).is_none());
        assert!(c.answer(reply(&c, &nine), t, &cal()).is_none());
        // The sender answering its own message is no answer either.
        assert!(c.answer(reply(&c, &oin(3)), t, &cal()).is_none());
        // A real one; a second one of the same party does not count again.
        assert!(c.answer(reply(&c, &one), t, &cal()).is_some());
        assert!(c.answer(reply(&c, &one), t, &cal()).is_none());
        assert!(!c.is_settled());
        let late = t + Duration::hours(25);
        assert_eq!(overdue_parties(&c, late), vec![two.clone()]);
        assert!(c.answer(reply(&c, &two), late, &cal()).unwrap().late);
        assert!(c.is_settled());
        assert!(overdue_parties(&c, late).is_empty());
    }

    #[test]
    fn each_notice_is_due_once_and_goes_to_owing_party_sender_and_regievoerder() {
        let t = utc(2025, 3, 4, 9, 0);
        let mut c = clock("24 hours", t);
        let regie = oin(7);
        let later = t + Duration::hours(25);
        assert!(take_due(&mut c, &cal(), t + Duration::hours(23), Some(&regie)).is_empty());
        let due = take_due(&mut c, &cal(), later, Some(&regie));
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].owed_by, oin(1));
        assert_eq!(due[0].deadline, t + Duration::hours(24));
        assert_eq!(due[0].to, [oin(1), oin(3), regie.clone()].into());
        // Sent: never again, however late it gets.
        assert!(take_due(&mut c, &cal(), later + Duration::days(9), Some(&regie)).is_empty());
        assert!(c.owed.values().all(|o| o.notified_at == Some(later)));
        // The regievoerder that owes the answer itself, or is the sender, is told once.
        let mut c = clock("24 hours", t);
        let due = take_due(&mut c, &cal(), later, Some(&oin(1)));
        assert_eq!(due[0].to, [oin(1), oin(3)].into());
        assert_eq!(due[1].to, [oin(1), oin(2), oin(3)].into());
    }

    #[test]
    fn expired_undelivered_recipients_owe_nothing() {
        let t = utc(2025, 3, 4, 9, 0);
        let mut c = AnswerClock::start(&meta(&[1, 2], t), &rule("24 hours")).unwrap();
        c.delivered(&oin(1), t);
        c.drop_undelivered([&oin(1), &oin(2)]);
        assert_eq!(c.owed.keys().cloned().collect::<Vec<_>>(), vec![oin(1)]);
    }

    #[test]
    fn a_clock_round_trips_through_json() {
        let c = clock("5 workdays", utc(2025, 3, 4, 9, 0));
        let back: AnswerClock = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod answer_by_tests {
    use super::*;
    use chrono::Utc;
    use ketenpost_schemas::policy::{Policy, Role};

    #[test]
    fn only_the_roles_that_owe_an_answer_are_owed_and_notified() {
        let policy = Policy::from_toml(ketenpost_schemas::testdata::TEST_POLICY).unwrap();
        let mut rule = policy.rule("uitstroom", Kind::Signaal).unwrap().clone();
        rule.answer_within = Some("24 hours".parse().unwrap());
        rule.answer_by = [Role::new("zorgaanbieder")].into();
        let (gem, zorg): (Oin, Oin) = (
            "00000001000001000001".parse().unwrap(),
            "00000001000003000001".parse().unwrap(),
        );
        let at = Utc::now();
        let meta = MessageMeta {
            id: MessageId::new(),
            sender: "00000001000002000001".parse().unwrap(),
            case_ref: CaseRef::random(),
            purpose: "uitstroom".into(),
            kind: Kind::Signaal,
            accepted_at: at,
            expires_at: at + chrono::Duration::days(7),
            pending: [gem.clone(), zorg.clone()].into(),
            fetched: BTreeSet::new(),
            recipients: [gem.clone(), zorg.clone()].into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            body_at: None,
            queue_seqs: Default::default(),
            views: Default::default(),
        };
        let roles = [
            (gem.clone(), Role::new("gemeente")),
            (zorg.clone(), Role::new("zorgaanbieder")),
        ];
        let clock = AnswerClock::start_for(&meta, &rule, &roles).unwrap();
        assert_eq!(clock.owed.keys().collect::<Vec<_>>(), vec![&zorg]);
        // No recipient owes an answer: no clock at all.
        assert!(AnswerClock::start_for(&meta, &rule, &roles[..1]).is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod answer_request_tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use ketenpost_schemas::policy::{Policy, Role};

    fn oin(n: u64) -> Oin {
        format!("{n:020}").parse().unwrap()
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, 9, 0, 0).unwrap()
    }

    /// A signal from 3 to a gemeente (1) and a zorgaanbieder (2), accepted at [`at`].
    fn meta() -> MessageMeta {
        let recipients: BTreeSet<Oin> = [oin(1), oin(2)].into();
        MessageMeta {
            id: MessageId::new(),
            sender: oin(3),
            case_ref: CaseRef::random(),
            purpose: "uitstroom".into(),
            kind: Kind::Signaal,
            accepted_at: at(),
            expires_at: at() + Duration::days(7),
            pending: recipients.clone(),
            fetched: BTreeSet::new(),
            recipients,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            body_at: None,
            queue_seqs: Default::default(),
            views: Default::default(),
        }
    }

    fn roles() -> [(Oin, Role); 2] {
        [
            (oin(1), Role::new("gemeente")),
            (oin(2), Role::new("zorgaanbieder")),
        ]
    }

    fn rule(answer_within: Option<&str>) -> KindRule {
        let policy = Policy::from_toml(ketenpost_schemas::testdata::TEST_POLICY).unwrap();
        let mut r = policy.rule("uitstroom", Kind::Signaal).unwrap().clone();
        r.answer_within = answer_within.map(|w| w.parse().unwrap());
        r.answer_by = BTreeSet::new();
        r.answer_kinds = [Kind::Reactie].into();
        r
    }

    fn request(by: &[&str], due: DateTime<Utc>) -> AnswerRequest {
        AnswerRequest {
            by: by.iter().map(|r| Role::new(*r)).collect(),
            due,
        }
    }

    #[test]
    fn a_request_binds_only_its_roles_and_only_they_are_notified() {
        let due = at() + Duration::days(3);
        let req = request(&["zorgaanbieder"], due);
        // No standing term: only the request binds, and only the zorgaanbieder.
        let mut c = AnswerClock::start_with(&meta(), &rule(None), &roles(), Some(&req)).unwrap();
        assert_eq!(c.owed.keys().collect::<Vec<_>>(), vec![&oin(2)]);
        assert!(c.owed[&oin(2)].request_only);
        // Not delivered: no deadline yet; delivered: the due date itself.
        assert_eq!(c.deadline(&oin(2), &Calendar::dutch()), None);
        assert!(!c.delivered(&oin(1), at()));
        assert!(c.delivered(&oin(2), at()));
        assert_eq!(c.deadline(&oin(2), &Calendar::dutch()), Some(due));
        let regie = oin(7);
        assert!(take_due(&mut c, &Calendar::dutch(), due, Some(&regie)).is_empty());
        let notices = take_due(
            &mut c,
            &Calendar::dutch(),
            due + Duration::seconds(1),
            Some(&regie),
        );
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].owed_by, oin(2));
        // The gemeente, which owes nothing, is not told.
        assert_eq!(notices[0].to, [oin(2), oin(3), regie].into());
        // Without a request and without a standing term there is no clock.
        assert!(AnswerClock::start_with(&meta(), &rule(None), &roles(), None).is_none());
    }

    #[test]
    fn a_request_without_roles_binds_every_recipient() {
        let req = request(&[], at() + Duration::days(3));
        let c = AnswerClock::start_with(&meta(), &rule(None), &roles(), Some(&req)).unwrap();
        assert_eq!(c.owed.len(), 2);
    }

    #[test]
    fn the_earlier_of_standing_term_and_request_counts() {
        let cal = Calendar::dutch();
        // Standing 5 days of delivery for everyone; the zorgaanbieder is asked sooner.
        let sooner = at() + Duration::days(1);
        let req = request(&["zorgaanbieder"], sooner);
        let mut c =
            AnswerClock::start_with(&meta(), &rule(Some("5 days")), &roles(), Some(&req)).unwrap();
        c.delivered(&oin(1), at());
        c.delivered(&oin(2), at());
        assert_eq!(c.deadline(&oin(1), &cal), Some(at() + Duration::days(5)));
        assert_eq!(c.deadline(&oin(2), &cal), Some(sooner));
        assert!(!c.owed[&oin(2)].request_only);
        // A request later than the standing term does not extend it.
        let later = request(&["zorgaanbieder"], at() + Duration::days(9));
        let mut c = AnswerClock::start_with(&meta(), &rule(Some("5 days")), &roles(), Some(&later))
            .unwrap();
        c.delivered(&oin(2), at());
        assert_eq!(c.deadline(&oin(2), &cal), Some(at() + Duration::days(5)));
        // An answer after the requested due date is late.
        let mut c = AnswerClock::start_with(&meta(), &rule(None), &roles(), Some(&req)).unwrap();
        c.delivered(&oin(2), at());
        let reply = Reply {
            id: MessageId::new(),
            sender: &oin(2),
            kind: Kind::Reactie,
            in_reply_to: Some(c.message_id),
        };
        let answered = c
            .answer(reply, sooner + Duration::seconds(1), &cal)
            .unwrap();
        assert!(answered.late);
        assert_eq!(answered.deadline, Some(sooner));
    }

    #[test]
    fn a_clock_of_before_answer_requests_still_reads() {
        // A clock as stored before answer requests: a plain answer_within, no request
        // fields on the owed entries.
        let c = AnswerClock::start(&meta(), &rule(Some("24 hours"))).unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        v["answer_within"] = serde_json::json!("24 hours");
        for o in v["owed"].as_object_mut().unwrap().values_mut() {
            let o = o.as_object_mut().unwrap();
            o.remove("requested_by");
            o.remove("request_only");
        }
        let back: AnswerClock = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
