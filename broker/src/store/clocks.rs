use chrono::{DateTime, Utc};
use ketenpost_schemas::ids::{CaseRef, MessageId};

use super::codec::parse;
use super::{Store, StoreError};
use ketenpost_core::deadlines::AnswerClock;

/// Answer clocks ([`ketenpost_core::deadlines`]): one per accepted message whose kind has an
/// `answer_within`, under the message id, kept after the body is deleted. A clock is
/// written with its message, and changed only by the transitions of the core (a receipt,
/// an answer, a deadline notice, an expiry, a deletion order) inside
/// [`Store::transition`], so concurrent changes never lose each other's update.
impl Store {
    /// A clock, if the message has one.
    pub fn clock(&self, id: &MessageId) -> Result<Option<AnswerClock>, StoreError> {
        self.deadlines
            .get(id.0.as_bytes())?
            .map(|v| parse(&v, "answer clock"))
            .transpose()
    }

    /// The ids of the answer clocks with a term overdue at `now` that no notice covers yet
    /// ([`AnswerClock::overdue`]), read one clock at a time: the sweep holds the overdue
    /// ones only, however many clocks run.
    pub fn overdue_clocks(
        &self,
        calendar: &ketenpost_schemas::calendar::Calendar,
        now: DateTime<Utc>,
    ) -> Result<Vec<MessageId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.deadlines.iter() {
            let (_, v) = item?;
            let clock: AnswerClock = parse(&v, "answer clock")?;
            if !clock.overdue(calendar, now).is_empty() {
                ids.push(clock.message_id);
            }
        }
        Ok(ids)
    }

    /// The ids of the answer clocks of a case.
    pub fn clock_ids_of_case(&self, case_ref: &CaseRef) -> Result<Vec<MessageId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.deadlines.iter() {
            let (_, v) = item?;
            let clock: AnswerClock = parse(&v, "answer clock")?;
            if &clock.case_ref == case_ref {
                ids.push(clock.message_id);
            }
        }
        Ok(ids)
    }
}
