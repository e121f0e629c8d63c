//! The Dutch workday calendar used for deadlines counted in workdays.
//!
//! Covenants give answer periods in *werkdagen*: "binnen vijf werkdagen" means five days
//! that are neither a weekend day nor a public holiday. This module computes the Dutch
//! national holidays for any year (Easter-based ones included), lets a policy add extra
//! days off, and turns "n workdays after this event" into a single UTC instant that the
//! broker can compare against the clock.
//!
//! All dates are Dutch dates: an event is placed on the calendar by its local date in
//! Europe/Amsterdam, not by its UTC date, because a message sent at 00:30 on a Friday in
//! the Netherlands was sent on Friday, even though it is still Thursday in UTC.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone,
    Utc, Weekday,
};
use chrono_tz::Europe::Amsterdam;

/// A day on which no workday is counted.
///
/// The national holidays are the generally recognised Dutch holidays (those the
/// *Algemene termijnenwet* names for extending legal time limits), plus the Sundays of
/// Easter and Whitsun for completeness. Two choices are made deliberately, so that
/// deadlines are never shorter than a partner can reasonably meet:
///
/// - [`Holiday::GoedeVrijdag`] is counted as a holiday. It is not one under the
///   Algemene termijnenwet, but many offices (and many collective agreements) close on it,
///   so a deadline counted across it gets one more day rather than one less.
/// - [`Holiday::Bevrijdingsdag`] is counted every year. Many collective agreements only
///   give it as a day off once every five years (the lustrum years), but the covenant
///   calendar counts it always, for the same reason.
///
/// Partners that close on other days (a municipality's own closing days, a bridge day
/// after Hemelvaartsdag) are covered by [`Holiday::Extra`], configured per policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holiday {
    /// New Year's Day, 1 January.
    Nieuwjaarsdag,
    /// Good Friday, two days before Easter Sunday (see the type's documentation).
    GoedeVrijdag,
    /// Easter Sunday.
    EerstePaasdag,
    /// Easter Monday.
    TweedePaasdag,
    /// King's Day: 27 April, or 26 April when 27 April is a Sunday (from 2014 on). Before
    /// 2014 this was Koninginnedag: 30 April, or 29 April when 30 April was a Sunday.
    Koningsdag,
    /// Liberation Day, 5 May, counted every year (see the type's documentation).
    Bevrijdingsdag,
    /// Ascension Day, 39 days after Easter Sunday.
    Hemelvaartsdag,
    /// Whit Sunday, 49 days after Easter Sunday.
    EerstePinksterdag,
    /// Whit Monday, 50 days after Easter Sunday.
    TweedePinksterdag,
    /// Christmas Day, 25 December.
    EersteKerstdag,
    /// Boxing Day, 26 December.
    TweedeKerstdag,
    /// A day off configured in the policy on top of the national holidays.
    Extra,
}

impl Holiday {
    /// The Dutch name of the holiday, as it appears in reports to the partners.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Nieuwjaarsdag => "Nieuwjaarsdag",
            Self::GoedeVrijdag => "Goede Vrijdag",
            Self::EerstePaasdag => "Eerste Paasdag",
            Self::TweedePaasdag => "Tweede Paasdag",
            Self::Koningsdag => "Koningsdag",
            Self::Bevrijdingsdag => "Bevrijdingsdag",
            Self::Hemelvaartsdag => "Hemelvaartsdag",
            Self::EerstePinksterdag => "Eerste Pinksterdag",
            Self::TweedePinksterdag => "Tweede Pinksterdag",
            Self::EersteKerstdag => "Eerste Kerstdag",
            Self::TweedeKerstdag => "Tweede Kerstdag",
            Self::Extra => "extra vrije dag",
        }
    }
}

impl fmt::Display for Holiday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Easter Sunday of a year in the Gregorian calendar.
///
/// Uses the anonymous Gregorian algorithm (Meeus/Jones/Butcher), which is exact for every
/// Gregorian year; it is extended to all years chrono can represent with floor division.
/// Outside chrono's date range (beyond roughly ±262,000 years) no date exists, and the
/// function saturates to [`NaiveDate::MIN`] or [`NaiveDate::MAX`] instead of panicking.
pub fn easter_sunday(year: i32) -> NaiveDate {
    let y = i64::from(year);
    let a = y.rem_euclid(19);
    let b = y.div_euclid(100);
    let c = y.rem_euclid(100);
    let d = b.div_euclid(4);
    let e = b.rem_euclid(4);
    let f = (b + 8).div_euclid(25);
    let g = (b - f + 1).div_euclid(3);
    let h = (19 * a + b - d - g + 15).rem_euclid(30);
    let i = c.div_euclid(4);
    let k = c.rem_euclid(4);
    let l = (32 + 2 * e + 2 * i - h - k).rem_euclid(7);
    let m = (a + 11 * h + 22 * l).div_euclid(451);
    let month = (h + l - 7 * m + 114).div_euclid(31);
    let day = (h + l - 7 * m + 114).rem_euclid(31) + 1;
    u32::try_from(month)
        .ok()
        .zip(u32::try_from(day).ok())
        .and_then(|(month, day)| NaiveDate::from_ymd_opt(year, month, day))
        .unwrap_or(if year < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        })
}

/// King's Day (Koninginnedag before 2014) of a year.
///
/// The pre-2014 rule used here (30 April, 29 April when that is a Sunday) is the one in
/// force from 1980 to 2013; earlier years moved to 1 May instead, and before 1949 the day
/// was in August. The calendar is meant for current deadlines, so those are not modelled.
fn koningsdag(year: i32) -> Option<NaiveDate> {
    let (day, when_sunday) = if year >= 2014 { (27, 26) } else { (30, 29) };
    let date = NaiveDate::from_ymd_opt(year, 4, day)?;
    if date.weekday() == Weekday::Sun {
        NaiveDate::from_ymd_opt(year, 4, when_sunday)
    } else {
        Some(date)
    }
}

/// All Dutch national holidays of a year, sorted by date.
///
/// See [`Holiday`] for the choices made (Goede Vrijdag and Bevrijdingsdag are always
/// counted). Two holidays can fall on the same date (Bevrijdingsdag and Hemelvaartsdag
/// did in 2016); both are then listed, in the declaration order of [`Holiday`]. A year
/// outside chrono's date range has no holidays.
pub fn national_holidays(year: i32) -> Vec<(NaiveDate, Holiday)> {
    if NaiveDate::from_ymd_opt(year, 1, 1).is_none() {
        return Vec::new();
    }
    let easter = easter_sunday(year);
    let after_easter = |days: u64| easter.checked_add_days(Days::new(days));
    let fixed = |month: u32, day: u32| NaiveDate::from_ymd_opt(year, month, day);
    let candidates = [
        (fixed(1, 1), Holiday::Nieuwjaarsdag),
        (easter.checked_sub_days(Days::new(2)), Holiday::GoedeVrijdag),
        (Some(easter), Holiday::EerstePaasdag),
        (after_easter(1), Holiday::TweedePaasdag),
        (koningsdag(year), Holiday::Koningsdag),
        (fixed(5, 5), Holiday::Bevrijdingsdag),
        (after_easter(39), Holiday::Hemelvaartsdag),
        (after_easter(49), Holiday::EerstePinksterdag),
        (after_easter(50), Holiday::TweedePinksterdag),
        (fixed(12, 25), Holiday::EersteKerstdag),
        (fixed(12, 26), Holiday::TweedeKerstdag),
    ];
    let mut holidays: Vec<(NaiveDate, Holiday)> = candidates
        .into_iter()
        .filter_map(|(date, holiday)| date.map(|date| (date, holiday)))
        .collect();
    holidays.sort();
    holidays
}

/// The national holiday on a date, if any (the first in declaration order when two fall
/// on the same date).
fn national_holiday(date: NaiveDate) -> Option<Holiday> {
    national_holidays(date.year())
        .into_iter()
        .find(|(day, _)| *day == date)
        .map(|(_, holiday)| holiday)
}

/// Whether a date falls Monday to Friday.
fn is_weekday(date: NaiveDate) -> bool {
    date.weekday().num_days_from_monday() < 5
}

/// The local date and time in Amsterdam at an instant.
///
/// `None` only when the local time lies past the end of chrono's range (chrono's own
/// conversion would panic there).
pub(crate) fn amsterdam_local(at: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = Amsterdam.offset_from_utc_datetime(&at.naive_utc()).fix();
    let shift = TimeDelta::try_seconds(i64::from(offset.local_minus_utc()))?;
    at.naive_utc().checked_add_signed(shift)
}

/// The earliest instant at which Amsterdam clocks show `local`.
///
/// When clocks are set back, a local time occurs twice and the earlier instant is taken,
/// so a deadline never ends later than the text of the policy suggests. When clocks jump
/// forward, a local time in the gap does not occur at all; it is then read with the offset
/// in force just before the jump, which moves it forward by the length of the gap (local
/// midnight inside a gap would map to the instant of the jump, the first instant of the
/// day). `None` only at the edges of chrono's range.
pub(crate) fn amsterdam_to_utc(local: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(at) = Amsterdam.from_local_datetime(&local).earliest() {
        return Some(at.with_timezone(&Utc));
    }
    let day_before = local.checked_sub_days(Days::new(1))?;
    let offset_before = Amsterdam.offset_from_utc_datetime(&day_before).fix();
    let shift = TimeDelta::try_seconds(i64::from(offset_before.local_minus_utc()))?;
    local.checked_sub_signed(shift).map(|utc| utc.and_utc())
}

/// The start of the calendar day `date` in Amsterdam, the covenants' local time: the first
/// instant Amsterdam clocks show that date (midnight, 22:00 or 23:00 UTC the day before).
/// Saturates at the edges of chrono's range.
pub fn start_of_local_day(date: NaiveDate) -> DateTime<Utc> {
    amsterdam_to_utc(date.and_time(chrono::NaiveTime::MIN)).unwrap_or(if date.year() < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// The end of the calendar day `date` in Amsterdam: the first instant of the next day
/// there (an exclusive bound, as [`Calendar::add_workdays`] gives). Saturates at the end of
/// chrono's range.
pub fn end_of_local_day(date: NaiveDate) -> DateTime<Utc> {
    date.checked_add_days(Days::new(1))
        .and_then(|next| amsterdam_to_utc(next.and_time(chrono::NaiveTime::MIN)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The workday calendar of a policy: the Dutch national holidays plus configured extra days.
///
/// A workday is a Monday to Friday that is not a holiday. The national holidays are
/// computed per year (see [`national_holidays`]), so the calendar needs no yearly update;
/// only the extra days are stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calendar {
    extra: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// The calendar with the Dutch national holidays only.
    pub fn dutch() -> Self {
        Self::default()
    }

    /// The Dutch calendar plus extra days off, such as a partner's collective closing days.
    ///
    /// Extra days on a weekend or on a national holiday are allowed and change nothing.
    pub fn with_extra_holidays(days: impl IntoIterator<Item = NaiveDate>) -> Self {
        Self {
            extra: days.into_iter().collect(),
        }
    }

    /// The extra days off configured on top of the national holidays, in date order.
    pub fn extra_holidays(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.extra.iter().copied()
    }

    /// The holiday on a date, if any.
    ///
    /// A national holiday wins over an extra day on the same date, so reports show its
    /// proper name; of two national holidays on one date, the first in declaration order
    /// of [`Holiday`] is returned.
    pub fn holiday(&self, date: NaiveDate) -> Option<Holiday> {
        national_holiday(date).or_else(|| self.extra.contains(&date).then_some(Holiday::Extra))
    }

    /// Whether a date is a workday: Monday to Friday and not a holiday.
    pub fn is_workday(&self, date: NaiveDate) -> bool {
        is_weekday(date) && self.holiday(date).is_none()
    }

    /// The number of workdays in `(from, to]`: after `from`, up to and including `to`.
    ///
    /// Half-open so that it matches [`Calendar::add_workdays`]: the day of the event itself
    /// never counts. Zero when `to` is not after `from`. Computed per year rather than per
    /// day, so long ranges are cheap.
    pub fn workdays_between(&self, from: NaiveDate, to: NaiveDate) -> u32 {
        if to <= from {
            return 0;
        }
        let days = u64::try_from((to - from).num_days()).unwrap_or(0);
        // Every run of seven consecutive days holds exactly five weekdays; only the
        // remaining days (fewer than seven) have to be looked at one by one.
        let first = u64::from(from.weekday().num_days_from_monday());
        let remainder = (1..=days % 7)
            .filter(|offset| (first + offset) % 7 < 5)
            .count() as u64;
        let weekdays = days / 7 * 5 + remainder;

        let in_range = |date: &NaiveDate| *date > from && *date <= to && is_weekday(*date);
        let mut holidays = 0u64;
        for year in from.year()..=to.year() {
            let mut dates: Vec<NaiveDate> = national_holidays(year)
                .into_iter()
                .map(|(date, _)| date)
                .filter(in_range)
                .collect();
            // Sorted by date, so two holidays on one date are adjacent.
            dates.dedup();
            holidays += dates.len() as u64;
        }
        holidays += self
            .extra
            .range((Bound::Excluded(from), Bound::Included(to)))
            .filter(|date| is_weekday(**date) && national_holiday(**date).is_none())
            .count() as u64;

        u32::try_from(weekdays.saturating_sub(holidays)).unwrap_or(u32::MAX)
    }

    /// The deadline `n` workdays after an instant.
    ///
    /// Semantics, chosen so that a partner always gets `n` whole workdays:
    ///
    /// - The instant is placed on its local date in Europe/Amsterdam; the day of the event
    ///   itself never counts, however early in the day it happened.
    /// - The deadline is the *end* of the `n`-th workday strictly after that date, given as
    ///   the first instant of the following local day. It is exclusive: an answer is in
    ///   time when `now < deadline`.
    /// - `n = 0` means the end of the local day of the event, whether or not that is a
    ///   workday.
    /// - Local midnight is converted to UTC with the offset in force at that midnight, so
    ///   the deadline moves with daylight saving time (22:00Z in summer, 23:00Z in winter).
    ///
    /// Example: an event on Thursday 2 April 2026 at 10:00 with 2 workdays. Friday 3 April
    /// is Goede Vrijdag and Monday 6 April Tweede Paasdag, so the workdays are Tuesday 7 and
    /// Wednesday 8 April, and the deadline is Thursday 9 April 00:00 local time,
    /// `2026-04-08T22:00:00Z`.
    ///
    /// A deadline beyond chrono's date range saturates to [`DateTime::<Utc>::MAX_UTC`]
    /// rather than panicking.
    pub fn add_workdays(&self, from: DateTime<Utc>, n: u32) -> DateTime<Utc> {
        amsterdam_local(from)
            .and_then(|local| self.nth_workday_after(local.date(), n))
            .and_then(|last| last.succ_opt())
            .and_then(|next| amsterdam_to_utc(next.and_time(NaiveTime::MIN)))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The `n`-th workday strictly after `start` (`start` itself for `n = 0`), or `None`
    /// past the end of chrono's date range.
    fn nth_workday_after(&self, start: NaiveDate, n: u32) -> Option<NaiveDate> {
        // At most five of every seven days are workdays: a count that cannot fit before the
        // end of chrono's range is answered at once instead of after walking to it.
        let days_left = u64::try_from((NaiveDate::MAX - start).num_days()).unwrap_or(0);
        if u64::from(n) > days_left / 7 * 5 + 5 {
            return None;
        }
        let mut day = start;
        let mut left = n;
        // Skip the rest of each year while it holds fewer workdays than are still needed,
        // so that a huge `n` costs one step per year instead of one per day.
        loop {
            if left == 0 {
                return Some(day);
            }
            let year_end = NaiveDate::from_ymd_opt(day.succ_opt()?.year(), 12, 31)?;
            let in_year = self.workdays_between(day, year_end);
            if in_year >= left {
                break;
            }
            left -= in_year;
            day = year_end;
        }
        // The answer lies within the current year: walk to it day by day.
        while left > 0 {
            day = day.succ_opt()?;
            if self.is_workday(day) {
                left -= 1;
            }
        }
        Some(day)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An instant given by its Amsterdam wall-clock time.
    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        amsterdam_to_utc(date(y, m, d).and_hms_opt(h, min, 0).unwrap()).unwrap()
    }

    #[test]
    fn easter_sundays() {
        assert_eq!(easter_sunday(2024), date(2024, 3, 31));
        assert_eq!(easter_sunday(2025), date(2025, 4, 20));
        assert_eq!(easter_sunday(2026), date(2026, 4, 5));
        assert_eq!(easter_sunday(2027), date(2027, 3, 28));
        assert_eq!(easter_sunday(2019), date(2019, 4, 21));
        assert_eq!(easter_sunday(2000), date(2000, 4, 23));
        // Extremes of the possible range: 22 March and 25 April.
        assert_eq!(easter_sunday(2285), date(2285, 3, 22));
        assert_eq!(easter_sunday(2038), date(2038, 4, 25));
        for year in 1583..3000 {
            let easter = easter_sunday(year);
            assert_eq!(easter.weekday(), Weekday::Sun, "{year}");
            assert!(easter >= date(year, 3, 22) && easter <= date(year, 4, 25));
        }
    }

    #[test]
    fn easter_out_of_range_saturates() {
        assert_eq!(easter_sunday(i32::MAX), NaiveDate::MAX);
        assert_eq!(easter_sunday(i32::MIN), NaiveDate::MIN);
        assert!(national_holidays(i32::MAX).is_empty());
    }

    #[test]
    fn koningsdag_dates() {
        let cal = Calendar::dutch();
        // 27 April 2025 is a Sunday.
        assert_eq!(cal.holiday(date(2025, 4, 26)), Some(Holiday::Koningsdag));
        assert_eq!(cal.holiday(date(2025, 4, 27)), None);
        assert_eq!(cal.holiday(date(2026, 4, 27)), Some(Holiday::Koningsdag));
        assert_eq!(cal.holiday(date(2026, 4, 26)), None);
        // Koninginnedag: 30 April 2013; 30 April 2006 was a Sunday.
        assert_eq!(cal.holiday(date(2013, 4, 30)), Some(Holiday::Koningsdag));
        assert_eq!(cal.holiday(date(2006, 4, 29)), Some(Holiday::Koningsdag));
        assert_eq!(cal.holiday(date(2006, 4, 30)), None);
    }

    #[test]
    fn holidays_2026() {
        let expected = vec![
            (date(2026, 1, 1), Holiday::Nieuwjaarsdag),
            (date(2026, 4, 3), Holiday::GoedeVrijdag),
            (date(2026, 4, 5), Holiday::EerstePaasdag),
            (date(2026, 4, 6), Holiday::TweedePaasdag),
            (date(2026, 4, 27), Holiday::Koningsdag),
            (date(2026, 5, 5), Holiday::Bevrijdingsdag),
            (date(2026, 5, 14), Holiday::Hemelvaartsdag),
            (date(2026, 5, 24), Holiday::EerstePinksterdag),
            (date(2026, 5, 25), Holiday::TweedePinksterdag),
            (date(2026, 12, 25), Holiday::EersteKerstdag),
            (date(2026, 12, 26), Holiday::TweedeKerstdag),
        ];
        assert_eq!(national_holidays(2026), expected);
    }

    #[test]
    fn names() {
        assert_eq!(Holiday::GoedeVrijdag.name(), "Goede Vrijdag");
        assert_eq!(Holiday::TweedePinksterdag.to_string(), "Tweede Pinksterdag");
        assert_eq!(Holiday::Extra.name(), "extra vrije dag");
    }

    #[test]
    fn coinciding_holidays_count_once() {
        // 2016: Hemelvaartsdag fell on Bevrijdingsdag, 5 May (a Thursday).
        let both: Vec<_> = national_holidays(2016)
            .into_iter()
            .filter(|(d, _)| *d == date(2016, 5, 5))
            .map(|(_, h)| h)
            .collect();
        assert_eq!(both, vec![Holiday::Bevrijdingsdag, Holiday::Hemelvaartsdag]);
        let cal = Calendar::dutch();
        assert_eq!(cal.holiday(date(2016, 5, 5)), Some(Holiday::Bevrijdingsdag));
        // Mon 2 .. Fri 6 May 2016 holds four workdays, not three.
        assert_eq!(cal.workdays_between(date(2016, 5, 1), date(2016, 5, 6)), 4);
    }

    #[test]
    fn workdays_and_holidays() {
        let cal = Calendar::dutch();
        assert!(cal.is_workday(date(2026, 4, 2)));
        assert!(!cal.is_workday(date(2026, 4, 3)));
        assert!(!cal.is_workday(date(2026, 4, 4)));
        assert!(!cal.is_workday(date(2026, 4, 5)));
        assert!(!cal.is_workday(date(2026, 4, 6)));
        assert!(cal.is_workday(date(2026, 4, 7)));
    }

    #[test]
    fn across_a_weekend() {
        let cal = Calendar::dutch();
        // Friday 9 January 2026 -> Monday 12 -> end of Monday, 00:00 CET on Tuesday.
        let from = local(2026, 1, 9, 10, 0);
        assert_eq!(cal.add_workdays(from, 1), utc("2026-01-12T23:00:00Z"));
        assert_eq!(cal.add_workdays(from, 2), utc("2026-01-13T23:00:00Z"));
        // Saturday and Sunday events count from Monday on as well.
        let saturday = local(2026, 1, 10, 23, 59);
        assert_eq!(cal.add_workdays(saturday, 1), utc("2026-01-12T23:00:00Z"));
    }

    #[test]
    fn across_easter_2026() {
        let cal = Calendar::dutch();
        let from = local(2026, 4, 2, 10, 0);
        assert_eq!(from, utc("2026-04-02T08:00:00Z"));
        assert_eq!(cal.add_workdays(from, 2), utc("2026-04-08T22:00:00Z"));
        assert_eq!(cal.add_workdays(from, 1), utc("2026-04-07T22:00:00Z"));
        assert_eq!(cal.workdays_between(date(2026, 4, 2), date(2026, 4, 8)), 2);
    }

    #[test]
    fn across_koningsdag() {
        let cal = Calendar::dutch();
        // 2025: Koningsdag is Saturday 26 April, so the weekend is all that is skipped.
        let from = local(2025, 4, 25, 9, 0);
        assert_eq!(cal.add_workdays(from, 1), utc("2025-04-28T22:00:00Z"));
        // 2026: Koningsdag is Monday 27 April.
        let from = local(2026, 4, 24, 9, 0);
        assert_eq!(cal.add_workdays(from, 1), utc("2026-04-28T22:00:00Z"));
    }

    #[test]
    fn across_christmas_and_new_year() {
        let cal = Calendar::dutch();
        // Thursday 24 December 2026; Friday 25 is Christmas, 1 January 2027 a Friday.
        let from = local(2026, 12, 24, 12, 0);
        assert_eq!(cal.add_workdays(from, 1), utc("2026-12-28T23:00:00Z"));
        assert_eq!(cal.add_workdays(from, 3), utc("2026-12-30T23:00:00Z"));
        assert_eq!(cal.add_workdays(from, 4), utc("2026-12-31T23:00:00Z"));
        assert_eq!(cal.add_workdays(from, 5), utc("2027-01-04T23:00:00Z"));
    }

    #[test]
    fn with_an_extra_holiday() {
        let cal = Calendar::with_extra_holidays([date(2026, 1, 12), date(2026, 4, 3)]);
        assert_eq!(cal.holiday(date(2026, 1, 12)), Some(Holiday::Extra));
        // A national holiday keeps its own name.
        assert_eq!(cal.holiday(date(2026, 4, 3)), Some(Holiday::GoedeVrijdag));
        assert_eq!(
            cal.extra_holidays().collect::<Vec<_>>(),
            vec![date(2026, 1, 12), date(2026, 4, 3)]
        );
        let from = local(2026, 1, 9, 10, 0);
        assert_eq!(cal.add_workdays(from, 1), utc("2026-01-13T23:00:00Z"));
        assert_eq!(
            Calendar::dutch().workdays_between(date(2026, 1, 9), date(2026, 1, 16)),
            5
        );
        assert_eq!(cal.workdays_between(date(2026, 1, 9), date(2026, 1, 16)), 4);
        // Counted once even though it is also a national holiday.
        assert_eq!(cal.workdays_between(date(2026, 4, 2), date(2026, 4, 8)), 2);
    }

    #[test]
    fn dst_change_weeks() {
        let cal = Calendar::dutch();
        // Summer time starts Sunday 29 March 2026.
        let friday = local(2026, 3, 27, 10, 0);
        assert_eq!(friday, utc("2026-03-27T09:00:00Z"));
        assert_eq!(cal.add_workdays(friday, 0), utc("2026-03-27T23:00:00Z"));
        assert_eq!(cal.add_workdays(friday, 1), utc("2026-03-30T22:00:00Z"));
        // Winter time starts Sunday 25 October 2026.
        let friday = local(2026, 10, 23, 10, 0);
        assert_eq!(friday, utc("2026-10-23T08:00:00Z"));
        assert_eq!(cal.add_workdays(friday, 0), utc("2026-10-23T22:00:00Z"));
        assert_eq!(cal.add_workdays(friday, 1), utc("2026-10-26T23:00:00Z"));
        let saturday = local(2026, 10, 24, 10, 0);
        assert_eq!(cal.add_workdays(saturday, 0), utc("2026-10-24T22:00:00Z"));
    }

    #[test]
    fn local_date_not_utc_date() {
        let cal = Calendar::dutch();
        // 23:30Z on Thursday 8 January is 00:30 on Friday 9 January in Amsterdam.
        assert_eq!(
            cal.add_workdays(utc("2026-01-08T23:30:00Z"), 1),
            utc("2026-01-12T23:00:00Z")
        );
        // 22:30Z is still Thursday 23:30 in Amsterdam.
        assert_eq!(
            cal.add_workdays(utc("2026-01-08T22:30:00Z"), 1),
            utc("2026-01-09T23:00:00Z")
        );
    }

    #[test]
    fn zero_workdays_is_end_of_local_day() {
        let cal = Calendar::dutch();
        // Even on a holiday.
        assert_eq!(
            cal.add_workdays(local(2026, 4, 3, 0, 0), 0),
            utc("2026-04-03T22:00:00Z")
        );
    }

    #[test]
    fn dst_gap_and_overlap() {
        // 02:30 on 29 March 2026 does not exist: read with the winter offset.
        let gap = date(2026, 3, 29).and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(amsterdam_to_utc(gap), Some(utc("2026-03-29T01:30:00Z")));
        // 02:30 on 25 October 2026 happens twice: the earlier one is taken.
        let twice = date(2026, 10, 25).and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(amsterdam_to_utc(twice), Some(utc("2026-10-25T00:30:00Z")));
        assert_eq!(amsterdam_local(utc("2026-10-25T01:30:00Z")), Some(twice));
    }

    #[test]
    fn workdays_between_a_year() {
        let cal = Calendar::dutch();
        // 2026 has 261 weekdays, 8 of them national holidays.
        assert_eq!(
            cal.workdays_between(date(2025, 12, 31), date(2026, 12, 31)),
            253
        );
        assert_eq!(cal.workdays_between(date(2026, 4, 8), date(2026, 4, 2)), 0);
        assert_eq!(cal.workdays_between(date(2026, 4, 2), date(2026, 4, 2)), 0);
    }

    #[test]
    fn fast_paths_agree_with_counting_day_by_day() {
        let cal = Calendar::with_extra_holidays([date(2026, 5, 15), date(2027, 12, 24)]);
        let start = date(2025, 11, 13);
        let mut day = start;
        let mut count = 0;
        for n in 1..=800u32 {
            loop {
                day = day.succ_opt().unwrap();
                if cal.is_workday(day) {
                    break;
                }
            }
            count += 1;
            assert_eq!(cal.nth_workday_after(start, n), Some(day), "n = {n}");
            assert_eq!(cal.workdays_between(start, day), count);
        }
    }

    #[test]
    fn huge_counts_saturate() {
        let cal = Calendar::dutch();
        let from = utc("2026-01-01T12:00:00Z");
        assert_eq!(cal.add_workdays(from, u32::MAX), DateTime::<Utc>::MAX_UTC);
        assert!(cal.add_workdays(from, 10_000_000) > from);
        assert_eq!(
            cal.add_workdays(DateTime::<Utc>::MAX_UTC, 1),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
