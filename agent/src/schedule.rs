//! Cron schedules read in an IANA time zone. Pure: no clocks are read here.

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed 5-field cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, o: &Self) -> bool {
        self.expr == o.expr
    }
}

impl Schedule {
    /// Parse standard 5-field cron (minute hour dom month dow). Seconds fields
    /// are refused so `30 2 * * *` can never be misread as 6-field input.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!("expected 5 fields, found {fields}"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| e.to_string())?;
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `now`, with the expression read in `tz`.
    ///
    /// A run missed while the daemon was down is not replayed: callers always
    /// ask from the present, so at most the next occurrence fires.
    pub fn next_after(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = now.trunc_subsecs(0).with_timezone(&tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Whether a kind missed its slot while the agent was down and should run once now.
///
/// `last_run` is when the kind last ran on this host (None: never — a fresh
/// install waits for its schedule instead of starting heavy work at install
/// time). A kind is due for catch-up when its most recent scheduled time lies
/// after its last run. Only ever one catch-up per kind, however many slots were
/// missed, so a long outage never replays a storm.
pub fn missed_slot(
    schedule: &Schedule,
    tz: Tz,
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let last_run = last_run?;
    let local = now.trunc_subsecs(0).with_timezone(&tz);
    let prev = schedule
        .cron
        .find_previous_occurrence(&local, false)
        .ok()?
        .with_timezone(&Utc);
    (prev > last_run).then_some(prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ist_0230_fires_at_2100_utc_the_day_before() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s
            .next_after(utc("2026-11-23T12:00:00Z"), chrono_tz::Asia::Kolkata)
            .unwrap();
        assert_eq!(next, utc("2026-11-23T21:00:00Z"));
    }

    #[test]
    fn next_fire_is_strictly_after_now_even_at_the_fire_instant() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let next = s
            .next_after(utc("2026-11-23T21:00:00.500Z"), chrono_tz::Asia::Kolkata)
            .unwrap();
        assert_eq!(next, utc("2026-11-24T21:00:00Z"));
    }

    #[test]
    fn dst_spring_forward_skipped_hour_still_fires_once_that_day() {
        // Europe/Helsinki jumps 03:00 → 04:00 on 2026-03-29; 03:30 does not exist that day.
        let s = Schedule::parse("30 3 * * *").unwrap();
        let tz = chrono_tz::Europe::Helsinki;
        let next = s.next_after(utc("2026-03-28T12:00:00Z"), tz).unwrap();
        let local = next.with_timezone(&tz);
        assert!(next > utc("2026-03-28T12:00:00Z"));
        assert!(next <= utc("2026-03-30T00:30:00Z"), "fired at {local}");
    }

    #[test]
    fn dst_fall_back_follows_local_wall_clock() {
        // Helsinki leaves summer time on 2026-10-25 (UTC+3 → UTC+2).
        let s = Schedule::parse("0 1 * * *").unwrap();
        let tz = chrono_tz::Europe::Helsinki;
        let before = s.next_after(utc("2026-10-23T12:00:00Z"), tz).unwrap();
        assert_eq!(before, utc("2026-10-23T22:00:00Z")); // 01:00 EEST on the 24th
        let after = s.next_after(utc("2026-10-25T12:00:00Z"), tz).unwrap();
        assert_eq!(after, utc("2026-10-25T23:00:00Z")); // 01:00 EET on the 26th
    }

    #[test]
    fn weekly_sunday_drill() {
        let s = Schedule::parse("0 4 * * 0").unwrap();
        let next = s
            .next_after(utc("2026-11-23T00:00:00Z"), chrono_tz::UTC)
            .unwrap(); // a Monday
        assert_eq!(
            next,
            chrono_tz::UTC
                .with_ymd_and_hms(2026, 11, 29, 4, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        );
    }

    #[test]
    fn rejects_six_fields_and_garbage() {
        assert!(Schedule::parse("0 30 2 * * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
        assert!(Schedule::parse("").is_err());
    }

    #[test]
    fn catch_up_table() {
        let s = Schedule::parse("30 2 * * *").unwrap(); // 21:00 UTC
        let tz = chrono_tz::Asia::Kolkata;
        let now = utc("2026-11-23T23:00:00Z"); // two hours after today's slot
        let cases = [
            (None, None, "fresh install: wait for the schedule"),
            (Some("2026-11-23T21:05:00Z"), None, "ran in today's slot"),
            (
                Some("2026-11-22T21:05:00Z"),
                Some("2026-11-23T21:00:00Z"),
                "down over today's slot: catch up once",
            ),
            (
                Some("2026-11-01T21:05:00Z"),
                Some("2026-11-23T21:00:00Z"),
                "down for weeks: still one catch-up, for the latest slot",
            ),
            (
                Some("2026-11-23T22:00:00Z"),
                None,
                "ran by hand after the slot",
            ),
        ];
        for (last, want, why) in cases {
            let got = missed_slot(&s, tz, last.map(utc), now);
            assert_eq!(got, want.map(utc), "{why}");
        }
    }

    proptest::proptest! {
        #[test]
        fn next_is_after_now_and_minute_aligned(secs in 1_600_000_000i64..2_000_000_000i64, m in 0u32..60, h in 0u32..24) {
            let s = Schedule::parse(&format!("{m} {h} * * *")).unwrap();
            let now = DateTime::from_timestamp(secs, 0).unwrap();
            for tz in [chrono_tz::Asia::Kolkata, chrono_tz::Europe::Helsinki, chrono_tz::America::New_York] {
                let next = s.next_after(now, tz).unwrap();
                proptest::prop_assert!(next > now);
                proptest::prop_assert!(next - now <= chrono::Duration::hours(26));
                proptest::prop_assert_eq!(next.timestamp() % 60, 0);
            }
        }
    }
}
