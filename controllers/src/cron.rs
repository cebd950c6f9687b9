//! Standard 5-field cron schedules (minute hour day-of-month month day-of-week) as
//! Kubernetes CronJobs accept them: `*`, lists, ranges, steps, month and weekday names, `7`
//! for Sunday, the `@hourly`-style macros, and Vixie cron's rule that when both day fields
//! are restricted a day matching either runs. Times are evaluated in a time zone.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    dom: u32,
    months: u16,
    dow: u8,
    dom_star: bool,
    dow_star: bool,
}

fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    what: &str,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = field == "*" || field == "?";
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(min + i as u32);
        }
        s.parse::<u32>()
            .map_err(|_| format!("invalid {what} value {s:?}"))
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("invalid step {s:?} in {what}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("step 0 in {what}"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what} range {range:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("time zones belong in spec.timeZone, not the schedule".into());
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "schedule {s:?} must have 5 fields, has {}",
                f.len()
            ));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minutes, _) = parse_field(f[0], 0, 59, &[], "minute")?;
        let (hours, _) = parse_field(f[1], 0, 23, &[], "hour")?;
        let (dom, dom_star) = parse_field(f[2], 1, 31, &[], "day of month")?;
        let (months, _) = parse_field(f[3], 1, 12, MONTHS, "month")?;
        let (mut dow, dow_star) = parse_field(f[4], 0, 7, DAYS, "day of week")?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            dom: dom as u32,
            months: months as u16,
            dow: (dow & 0x7f) as u8,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, d: &DateTime) -> bool {
        let dom_ok = self.dom & (1 << d.day()) != 0;
        let dow_ok = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (true, false) => dow_ok,
            (false, true) => dom_ok,
            (false, false) => dom_ok || dow_ok,
        }
    }

    /// The first scheduled time strictly after `after`, in `tz`; None if none within 5 years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        // Next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = t
                    .checked_add(1.day())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .checked_add(1.hour())
                    .ok()?
                    .with()
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A wall time skipped by a DST jump resolves forward, as cron implementations do.
            let z: Zoned = t.to_zoned(tz.clone()).ok()?;
            let ts = z.timestamp();
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The most recent scheduled time in (last, now], and how many were missed before it.
    pub fn most_recent(
        &self,
        last: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> (Option<Timestamp>, usize) {
        let mut latest = None;
        let mut count: usize = 0;
        let mut t = last;
        while let Some(next) = self.next_after(t, tz) {
            if next > now {
                break;
            }
            latest = Some(next);
            count += 1;
            t = next;
            // Upstream gives up counting past 100 missed runs.
            if count > 100 {
                break;
            }
        }
        (latest, count.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn every_minute() {
        let s = Schedule::parse("*/1 * * * *").expect("valid");
        assert_eq!(
            s.next_after(ts("2026-11-25T10:00:30Z"), &TimeZone::UTC),
            Some(ts("2026-11-25T10:01:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-11-25T10:01:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-25T10:02:00Z"))
        );
    }

    #[test]
    fn ranges_steps_names_and_day_rules() {
        let s = Schedule::parse("15 9-17/4 * * mon-fri").expect("valid");
        // 2026-11-28 is a Saturday: next is Monday 09:15.
        assert_eq!(
            s.next_after(ts("2026-11-27T17:20:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-30T09:15:00Z"))
        );
        let both = Schedule::parse("0 0 1 * 1").expect("valid");
        // 1st of the month OR a Monday: from Wed 2026-11-25 the next is Mon 2026-11-30.
        assert_eq!(
            both.next_after(ts("2026-11-25T00:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-30T00:00:00Z"))
        );
        assert_eq!(Schedule::parse("@hourly"), Schedule::parse("0 * * * *"));
        assert_eq!(Schedule::parse("0 0 * * 7"), Schedule::parse("0 0 * * 0"));
    }

    #[test]
    fn time_zones() {
        let s = Schedule::parse("0 9 * * *").expect("valid");
        let tokyo = TimeZone::get("Asia/Tokyo").expect("tzdb");
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(
            s.next_after(ts("2026-11-25T01:00:00Z"), &tokyo),
            Some(ts("2026-11-26T00:00:00Z"))
        );
    }

    #[test]
    fn missed_runs_are_counted() {
        let s = Schedule::parse("*/10 * * * *").expect("valid");
        let (latest, missed) = s.most_recent(
            ts("2026-11-25T10:00:00Z"),
            ts("2026-11-25T10:35:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!(latest, Some(ts("2026-11-25T10:30:00Z")));
        assert_eq!(missed, 2, "10:10 and 10:20 were missed");
    }

    #[test]
    fn bad_schedules_say_why() {
        for (bad, why) in [
            ("* * * *", "5 fields"),
            ("61 * * * *", "outside 0-59"),
            ("*/0 * * * *", "step 0"),
            ("TZ=UTC * * * * *", "spec.timeZone"),
            ("* * * foo *", "invalid month"),
        ] {
            let err = Schedule::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
