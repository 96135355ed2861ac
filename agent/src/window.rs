//! Weekly maintenance windows read in an IANA time zone (`"Sun 22:00-24:00"`).
//! Pure: no clocks are read here; callers pass "now".
//!
//! A window is a set of week days and a local time span starting on those
//! days. An end at or before the start crosses midnight (`"Sat 23:00-01:00"`
//! ends on Sunday); `24:00` is the next midnight. Local times are turned into
//! instants with the zone's rules of that very day: a start or end inside a
//! spring-forward gap moves to the first minute after the gap, and one in a
//! repeated autumn hour takes the earlier instant for a start and the later
//! one for an end, so a window is never shortened by a clock change beyond
//! the hour that does not exist.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;

/// A parsed weekly maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    text: String,
    /// Monday = 0 … Sunday = 6.
    days: [bool; 7],
    /// Minutes after local midnight of the start day.
    start: u32,
    /// Minutes after local midnight; `<= start` means on the next day.
    end: u32,
}

/// Where "now" stands relative to a window's occurrences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// Now lies inside an occurrence (start inclusive, end exclusive).
    pub in_window: bool,
    /// The end of the latest occurrence that is over (at or before now).
    pub last_end: DateTime<Utc>,
    /// The start of the next occurrence after now.
    pub next_start: DateTime<Utc>,
}

fn day_index(name: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(name))
}

fn parse_time(s: &str, allow_24: bool) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let num = |x: &str| -> Result<u32, String> {
        if x.len() != 2 || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?} is not HH:MM"));
        }
        x.parse().map_err(|_| format!("{s:?} is not HH:MM"))
    };
    let (h, m) = (num(h)?, num(m)?);
    match (h, m) {
        (24, 0) if allow_24 => Ok(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(format!("{s:?} is not a time of day")),
    }
}

impl MaintenanceWindow {
    /// Parse `DAYS HH:MM-HH:MM`: DAYS is a comma-separated list of day names
    /// (`Mon` … `Sun`) or ranges (`Mon-Fri`, `Sat-Mon`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let (Some(days_s), Some(span), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected DAYS HH:MM-HH:MM".into());
        };
        let mut days = [false; 7];
        for item in days_s.split(',') {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let unknown =
                |d: &str| format!("{d:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)");
            let a = day_index(a).ok_or_else(|| unknown(a))?;
            let b = day_index(b).ok_or_else(|| unknown(b))?;
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        let (s, e) = span
            .split_once('-')
            .ok_or_else(|| format!("{span:?} is not HH:MM-HH:MM"))?;
        let start = parse_time(s, false)?;
        let end = parse_time(e, true)?;
        if end == start {
            return Err("the window has no length (start = end)".into());
        }
        Ok(MaintenanceWindow {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            days,
            start,
            end,
        })
    }

    /// The window as written (whitespace normalised).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The occurrence that starts on local date `d`, as instants.
    fn occurrence(&self, d: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let at = |day: NaiveDate, minutes: u32| -> NaiveDateTime {
            day.and_time(NaiveTime::MIN) + Duration::minutes(i64::from(minutes))
        };
        let start = at(d, self.start);
        let end = if self.end <= self.start {
            at(d, self.end + MINUTES_PER_DAY)
        } else {
            at(d, self.end)
        };
        (to_instant(start, tz, false), to_instant(end, tz, true))
    }

    /// Where `now` stands: inside an occurrence or not, the end of the last
    /// one that is over, the start of the next one.
    pub fn state(&self, now: DateTime<Utc>, tz: Tz) -> WindowState {
        let today = now.with_timezone(&tz).date_naive();
        let mut in_window = false;
        let mut last_end: Option<DateTime<Utc>> = None;
        let mut next_start: Option<DateTime<Utc>> = None;
        // Every occurrence that can matter: a week and a day either side
        // (one starts every week; one may end a day after it started).
        for offset in -8..=8 {
            let d = today + Duration::days(offset);
            if !self.days[d.weekday().num_days_from_monday() as usize] {
                continue;
            }
            let (s, e) = self.occurrence(d, tz);
            if s <= now && now < e {
                in_window = true;
            }
            if e <= now && last_end.is_none_or(|l| e > l) {
                last_end = Some(e);
            }
            if s > now && next_start.is_none_or(|n| s < n) {
                next_start = Some(s);
            }
        }
        WindowState {
            in_window,
            // A parsed window has at least one day, so both exist within ±8 days.
            last_end: last_end.unwrap_or(now),
            next_start: next_start.unwrap_or(now),
        }
    }
}

impl std::fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A local time as an instant (see the module doc for gaps and repeats).
fn to_instant(local: NaiveDateTime, tz: Tz, later: bool) -> DateTime<Utc> {
    let mut t = local;
    // Gaps are at most a few hours long; step forward a minute at a time.
    for _ in 0..(24 * 60) {
        match tz.from_local_datetime(&t) {
            chrono::LocalResult::Single(x) => return x.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(a, b) => {
                return if later { b } else { a }.with_timezone(&Utc)
            }
            chrono::LocalResult::None => t += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn posture_window_parse_table() {
        let ok = [
            (
                "Sun 22:00-24:00",
                [false, false, false, false, false, false, true],
                1320,
                1440,
            ),
            (
                "sun  22:00-24:00",
                [false, false, false, false, false, false, true],
                1320,
                1440,
            ),
            (
                "Mon-Fri 12:00-13:30",
                [true, true, true, true, true, false, false],
                720,
                810,
            ),
            (
                "Sat-Mon 23:00-01:00",
                [true, false, false, false, false, true, true],
                1380,
                60,
            ),
            (
                "Tue,Thu 00:00-24:00",
                [false, true, false, true, false, false, false],
                0,
                1440,
            ),
        ];
        for (text, days, start, end) in ok {
            let w = MaintenanceWindow::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((w.days, w.start, w.end), (days, start, end), "{text}");
        }
        for bad in [
            "",
            "Sun",
            "Sun 22:00",
            "Sunday 22:00-24:00",
            "Sun 22:00-24:01",
            "Sun 24:00-01:00",
            "Sun 22:00-22:00",
            "Sun 2:00-4:00",
            "Sun 22:00-24:00 extra",
            "Xyz 01:00-02:00",
        ] {
            assert!(MaintenanceWindow::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn posture_window_state_table() {
        let sun = MaintenanceWindow::parse("Sun 22:00-24:00").unwrap();
        let over_midnight = MaintenanceWindow::parse("Sat 23:00-01:00").unwrap();
        let berlin_night = MaintenanceWindow::parse("Sun 02:00-04:00").unwrap();
        let z = |s: &str| -> Tz { s.parse().unwrap() };
        // (name, window, zone, now, in window, last end, next start)
        let cases = [
            (
                "Sunday before the window (2024-06-02 is a Sunday)",
                &sun, z("UTC"), "2024-06-02T21:59:00Z", false,
                "2024-05-27T00:00:00Z", "2024-06-02T22:00:00Z",
            ),
            (
                "inside the window",
                &sun, z("UTC"), "2024-06-02T23:00:00Z", true,
                "2024-05-27T00:00:00Z", "2024-06-09T22:00:00Z",
            ),
            (
                "the window's end is already over",
                &sun, z("UTC"), "2024-06-03T00:00:00Z", false,
                "2024-06-03T00:00:00Z", "2024-06-09T22:00:00Z",
            ),
            (
                "Monday after",
                &sun, z("UTC"), "2024-06-03T09:00:00Z", false,
                "2024-06-03T00:00:00Z", "2024-06-09T22:00:00Z",
            ),
            (
                "read in Asia/Kolkata (+05:30): 16:30-18:30 UTC",
                &sun, z("Asia/Kolkata"), "2024-06-02T17:00:00Z", true,
                "2024-05-26T18:30:00Z", "2024-06-09T16:30:00Z",
            ),
            (
                "Kolkata, Monday morning UTC is after the window",
                &sun, z("Asia/Kolkata"), "2024-06-02T18:30:00Z", false,
                "2024-06-02T18:30:00Z", "2024-06-09T16:30:00Z",
            ),
            (
                "a window across midnight, on its second day",
                &over_midnight, z("UTC"), "2024-06-02T00:30:00Z", true,
                "2024-05-26T01:00:00Z", "2024-06-08T23:00:00Z",
            ),
            (
                "Berlin spring forward (2024-03-31): 02:00 does not exist, the window starts 03:00 CEST",
                &berlin_night, z("Europe/Berlin"), "2024-03-31T00:30:00Z", false,
                "2024-03-24T03:00:00Z", "2024-03-31T01:00:00Z",
            ),
            (
                "Berlin spring forward: inside, ends 04:00 CEST",
                &berlin_night, z("Europe/Berlin"), "2024-03-31T01:30:00Z", true,
                "2024-03-24T03:00:00Z", "2024-04-07T00:00:00Z",
            ),
            (
                "Berlin fall back (2024-10-27): 02:00 happens twice, the window starts at the first",
                &berlin_night, z("Europe/Berlin"), "2024-10-27T00:00:00Z", true,
                "2024-10-20T02:00:00Z", "2024-11-03T01:00:00Z",
            ),
            (
                "Berlin fall back: ends 04:00 CET",
                &berlin_night, z("Europe/Berlin"), "2024-10-27T03:00:00Z", false,
                "2024-10-27T03:00:00Z", "2024-11-03T01:00:00Z",
            ),
        ];
        for (name, w, tz, now, inside, last_end, next_start) in cases {
            let st = w.state(utc(now), tz);
            assert_eq!(
                st,
                WindowState {
                    in_window: inside,
                    last_end: utc(last_end),
                    next_start: utc(next_start)
                },
                "{name}"
            );
        }
    }
}
