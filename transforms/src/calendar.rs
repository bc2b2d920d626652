//! Calendar arithmetic for windows and forecasts: lengths in calendar units ([`Every`]: `1d`,
//! `1w`, `1mo`, with the day a week starts on), in a time zone.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A day of the week.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    #[default]
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    /// Days after Monday.
    pub(crate) fn days_after_monday(self) -> i64 {
        self as i64
    }
}

/// A calendar-aware length: `n` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    pub(crate) n: i64,
    pub(crate) unit: Unit,
    /// Weeks start this many days after Monday.
    week_start: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Every {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let n: i64 = text[..digits]
            .parse()
            .map_err(|_| format!("`{text}` does not start with a number"))?;
        let unit = match &text[digits..] {
            "s" => Unit::Second,
            "m" => Unit::Minute,
            "h" => Unit::Hour,
            "d" => Unit::Day,
            "w" => Unit::Week,
            "mo" => Unit::Month,
            other => return Err(format!("`{other}` is not a unit: use s, m, h, d, w or mo")),
        };
        if n < 1 {
            return Err(format!("`{text}` must be at least 1"));
        }
        if let Some(per_day) = unit.seconds().map(|s| 86_400 % (s * n)) {
            if per_day != 0 {
                return Err(format!("`{text}` does not divide a day"));
            }
        }
        Ok(Every {
            n,
            unit,
            week_start: 0,
        })
    }

    /// The same length, its weeks starting on `day`.
    pub fn weeks_from(self, day: Weekday) -> Self {
        Every {
            week_start: day.days_after_monday(),
            ..self
        }
    }

    /// The start of the window of this length containing `t`.
    pub(crate) fn align(
        &self,
        t: jiff::Timestamp,
        tz: &jiff::tz::TimeZone,
    ) -> Result<jiff::Zoned, String> {
        let z = t.to_zoned(tz.clone());
        let err = |e: jiff::Error| e.to_string();
        let epoch = jiff::civil::date(1970, 1, 1);
        let start_date = match self.unit {
            Unit::Second | Unit::Minute | Unit::Hour => {
                let day = z.start_of_day().map_err(err)?;
                let size = self.unit.seconds().unwrap_or(1) * self.n;
                let secs = t.as_second() - day.timestamp().as_second();
                let start = day.timestamp().as_second() + secs - secs.rem_euclid(size);
                return jiff::Timestamp::from_second(start)
                    .map(|s| s.to_zoned(tz.clone()))
                    .map_err(err);
            }
            Unit::Day => {
                let days = (z.date() - epoch).get_days() as i64;
                epoch
                    .checked_add(jiff::Span::new().days(days - days.rem_euclid(self.n)))
                    .map_err(err)?
            }
            Unit::Week => {
                // 1970-01-05 was a Monday.
                let first = jiff::civil::date(1970, 1, 5)
                    .checked_add(jiff::Span::new().days(self.week_start))
                    .map_err(err)?;
                let days = (z.date() - first).get_days() as i64;
                let weeks = days.div_euclid(7);
                first
                    .checked_add(jiff::Span::new().days((weeks - weeks.rem_euclid(self.n)) * 7))
                    .map_err(err)?
            }
            Unit::Month => {
                let months = (z.year() as i64 - 1970) * 12 + z.month() as i64 - 1;
                let start = months - months.rem_euclid(self.n);
                jiff::civil::date(
                    (1970 + start.div_euclid(12)) as i16,
                    (start.rem_euclid(12) + 1) as i8,
                    1,
                )
            }
        };
        start_date.to_zoned(tz.clone()).map_err(err)
    }

    /// `z` moved by `k` of this length.
    pub fn add(&self, z: &jiff::Zoned, k: i64) -> Result<jiff::Zoned, String> {
        let n = self.n * k;
        let span = match self.unit {
            Unit::Second => jiff::Span::new().seconds(n),
            Unit::Minute => jiff::Span::new().minutes(n),
            Unit::Hour => jiff::Span::new().hours(n),
            Unit::Day => jiff::Span::new().days(n),
            Unit::Week => jiff::Span::new().weeks(n),
            Unit::Month => jiff::Span::new().months(n),
        };
        z.checked_add(span).map_err(|e| e.to_string())
    }
}

impl Unit {
    pub(crate) fn seconds(self) -> Option<i64> {
        match self {
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3600),
            _ => None,
        }
    }
}
