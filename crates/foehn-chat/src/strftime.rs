//! `strftime_now(format)`: the current UTC time formatted like Python's
//! `datetime.strftime`, for templates that print today's date (Llama 3.x,
//! Mistral Small). Only the C-locale specifiers templates use are known;
//! anything else is copied as is.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar time, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UtcTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Monday … 6 = Sunday
    weekday: u32,
    /// 1..=366
    yday: u32,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl UtcTime {
    /// The current time (the epoch if the clock is before it).
    pub(crate) fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(i64::try_from(secs).unwrap_or(i64::MAX / 2))
    }

    /// Breaks down seconds since the Unix epoch (proleptic Gregorian calendar).
    pub(crate) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUMULATIVE[month as usize - 1] + day + u32::from(leap && month > 2);
        // 1970-01-01 was a Thursday (weekday 3 counting from Monday = 0).
        let weekday = (days + 3).rem_euclid(7) as u32;
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday,
            yday,
        }
    }

    /// Formats like C/Python `strftime` in the C locale; `%-d`-style flags
    /// (no padding) are accepted as glibc does.
    pub(crate) fn format(&self, fmt: &str) -> String {
        let mut out = String::with_capacity(fmt.len() + 16);
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = chars.next();
            let pad = spec != Some('-');
            if !pad {
                spec = chars.next();
            }
            let num = |out: &mut String, v: i64, width: usize| {
                if pad {
                    out.push_str(&format!("{v:0width$}"));
                } else {
                    out.push_str(&v.to_string());
                }
            };
            let hour12 = if self.hour.is_multiple_of(12) {
                12
            } else {
                self.hour % 12
            };
            match spec {
                Some('Y') => out.push_str(&self.year.to_string()),
                Some('y') => num(&mut out, self.year.rem_euclid(100), 2),
                Some('m') => num(&mut out, self.month.into(), 2),
                Some('d') => num(&mut out, self.day.into(), 2),
                Some('e') => out.push_str(&format!("{:2}", self.day)),
                Some('H') => num(&mut out, self.hour.into(), 2),
                Some('I') => num(&mut out, hour12.into(), 2),
                Some('M') => num(&mut out, self.minute.into(), 2),
                Some('S') => num(&mut out, self.second.into(), 2),
                Some('j') => num(&mut out, self.yday.into(), 3),
                Some('p') => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                Some('B') => out.push_str(MONTHS[self.month as usize - 1]),
                Some('b') | Some('h') => out.push_str(&MONTHS[self.month as usize - 1][..3]),
                Some('A') => out.push_str(WEEKDAYS[self.weekday as usize]),
                Some('a') => out.push_str(&WEEKDAYS[self.weekday as usize][..3]),
                Some('u') => out.push_str(&(self.weekday + 1).to_string()),
                Some('w') => out.push_str(&((self.weekday + 1) % 7).to_string()),
                Some('F') => out.push_str(&self.format("%Y-%m-%d")),
                Some('D') => out.push_str(&self.format("%m/%d/%y")),
                Some('T') => out.push_str(&self.format("%H:%M:%S")),
                Some('R') => out.push_str(&self.format("%H:%M")),
                Some('c') => out.push_str(&self.format("%a %b %e %H:%M:%S %Y")),
                Some('x') => out.push_str(&self.format("%m/%d/%y")),
                Some('X') => out.push_str(&self.format("%H:%M:%S")),
                Some('Z') => out.push_str("UTC"),
                Some('z') => out.push_str("+0000"),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    if !pad {
                        out.push('-');
                    }
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

/// The template function: `strftime_now("%d %b %Y")` → `"26 Jul 2024"`.
pub(crate) fn strftime_now(format: &str) -> String {
    UtcTime::now().format(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_break_down() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = UtcTime::from_unix(1_721_999_109);
        assert_eq!(t.format("%Y-%m-%d %H:%M:%S"), "2024-07-26 13:05:09");
        assert_eq!(t.format("%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            t.format("%A %B %-d, %j, %I%p %%"),
            "Friday July 26, 208, 01PM %"
        );
        assert_eq!(
            UtcTime::from_unix(0).format("%a %F %T"),
            "Thu 1970-01-01 00:00:00"
        );
        assert_eq!(
            UtcTime::from_unix(951_782_400).format("%F %j %a"),
            "2000-02-29 060 Tue"
        );
        assert_eq!(UtcTime::from_unix(-86_400).format("%F"), "1969-12-31");
        assert_eq!(t.format("%Q %-d"), "%Q 26");
    }
}
