//! Standard 5-field cron schedules (minute hour day-of-month month day-of-week) as
//! Kubernetes CronJobs accept them (robfig/cron's `ParseStandard`, which upstream's
//! validation and controller use): `*`/`?`, lists, ranges, steps, month and weekday names,
//! the `@hourly`-style macros, `@every <duration>` (Go's duration syntax), and the rule that when both day fields are restricted a day
//! matching either runs; errors worded as robfig/cron's. Times are evaluated in a time zone.
//! Used by the apiserver's CronJob validation and the controller-manager's CronJob
//! controller.

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
    /// `@every <duration>`: whole seconds between runs (robfig/cron's `ConstantDelaySchedule`).
    every: Option<i64>,
}

/// Go's `time.ParseDuration`, in nanoseconds (negative ones too), with its error words
/// (`time: invalid duration "x"`): for values upstream parses with it and whose errors it
/// shows (`@every`, the apiserver's `timeout` parameter).
pub fn go_duration(s: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += value * scale;
    }
    let nanos = total as i128;
    Ok(if negative { -nanos } else { nanos })
}

/// A number as robfig/cron's `mustParseInt` reads it (Go's `strconv.Atoi` wording).
fn parse_uint(s: &str) -> Result<u32, String> {
    match s.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("negative number ({n}) not allowed: {s}")),
        Ok(n) => u32::try_from(n).map_err(|_| {
            format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: value out of range")
        }),
        Err(_) => Err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax"
        )),
    }
}

/// One field (robfig/cron's `getField`/`getRange`, with its messages): the bits it sets and
/// whether it was `*`.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = field == "*" || field == "?";
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(min + i as u32);
        }
        parse_uint(s)
    };
    for expr in field.split(',') {
        let parts: Vec<&str> = expr.split('/').collect();
        let low_high: Vec<&str> = parts[0].split('-').collect();
        let (lo, mut hi) = if low_high[0] == "*" || low_high[0] == "?" {
            (min, max)
        } else {
            let lo = value(low_high[0])?;
            match low_high.len() {
                1 => (lo, lo),
                2 => (lo, value(low_high[1])?),
                _ => return Err(format!("too many hyphens: {expr}")),
            }
        };
        let step = match parts.len() {
            1 => 1,
            2 => {
                // `5/15` means from 5 to the end, every 15
                if low_high.len() == 1 {
                    hi = max;
                }
                parse_uint(parts[1])?
            }
            _ => return Err(format!("too many slashes: {expr}")),
        };
        if lo < min {
            return Err(format!(
                "beginning of range ({lo}) below minimum ({min}): {expr}"
            ));
        }
        if hi > max {
            return Err(format!("end of range ({hi}) above maximum ({max}): {expr}"));
        }
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {expr}"
            ));
        }
        if step == 0 {
            return Err(format!("step of range should be a positive number: {expr}"));
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
    /// A standard schedule as upstream's validation (robfig/cron's `ParseStandard`) reads
    /// it, with its error messages; a leading `TZ=`/`CRON_TZ=` is not taken here (the
    /// CronJob's `timeZone` says where it runs).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty spec string".into());
        }
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with("@every ") => {
                let nanos = go_duration(&d["@every ".len()..])
                    .map_err(|e| format!("failed to parse duration {d}: {e}"))?;
                // robfig/cron's `Every`: at least a second, whole seconds
                let seconds = (nanos / 1_000_000_000).max(1) as i64;
                return Ok(Schedule {
                    minutes: 0,
                    hours: 0,
                    dom: 0,
                    months: 0,
                    dow: 0,
                    dom_star: false,
                    dow_star: false,
                    every: Some(seconds),
                });
            }
            d if d.starts_with('@') => return Err(format!("unrecognized descriptor: {d}")),
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                f.len(),
                f.join(" ")
            ));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minutes, _) = parse_field(f[0], 0, 59, &[])?;
        let (hours, _) = parse_field(f[1], 0, 23, &[])?;
        let (dom, dom_star) = parse_field(f[2], 1, 31, &[])?;
        let (months, _) = parse_field(f[3], 1, 12, MONTHS)?;
        let (dow, dow_star) = parse_field(f[4], 0, 6, DAYS)?;
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            dom: dom as u32,
            months: months as u16,
            dow: dow as u8,
            dom_star,
            dow_star,
            every: None,
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
        if let Some(every) = self.every {
            // robfig/cron's `ConstantDelaySchedule.Next`: the delay from the whole second
            return Timestamp::from_second(after.as_second().checked_add(every)?).ok();
        }
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
        assert_eq!(Schedule::parse("0 0 * * SUN"), Schedule::parse("0 0 * * 0"));
    }

    #[test]
    fn every_is_a_constant_delay_from_the_whole_second() {
        let s = Schedule::parse("@every 1h30m").expect("valid");
        assert_eq!(
            s.next_after(ts("2026-11-25T10:00:30.5Z"), &TimeZone::UTC),
            Some(ts("2026-11-25T11:30:30Z"))
        );
        let fast = Schedule::parse("@every 300ms").expect("valid");
        assert_eq!(
            fast.next_after(ts("2026-11-25T10:00:30Z"), &TimeZone::UTC),
            Some(ts("2026-11-25T10:00:31Z")),
            "at least a second"
        );
        let (latest, missed) = Schedule::parse("@every 10m").expect("valid").most_recent(
            ts("2026-11-25T10:00:00Z"),
            ts("2026-11-25T10:35:00Z"),
            &TimeZone::UTC,
        );
        assert_eq!((latest, missed), (Some(ts("2026-11-25T10:30:00Z")), 2));
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
    fn bad_schedules_say_why_as_robfig_cron_does() {
        for (bad, why) in [
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("61 * * * *", "end of range (61) above maximum (59): 61"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            (
                "5-3 * * * *",
                "beginning of range (5) beyond end of range (3): 5-3",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("0 0 * * 7", "end of range (7) above maximum (6): 7"),
            (
                "* * * foo *",
                r#"failed to parse int from foo: strconv.Atoi: parsing "foo": invalid syntax"#,
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            (
                "@every 5x",
                r#"failed to parse duration @every 5x: time: unknown unit "x" in duration "5x""#,
            ),
            (
                "@every often",
                r#"failed to parse duration @every often: time: invalid duration "often""#,
            ),
            (
                "TZ=UTC * * * * *",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
        ] {
            assert_eq!(Schedule::parse(bad).expect_err(bad), why, "{bad}");
        }
    }
}
