//! Statement periods: calendar months in UTC.

use std::fmt;

use time::{Date, Month};

use crate::StatementError;

const MS_PER_DAY: i64 = 86_400_000;

/// One calendar month, UTC. Ordered by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    month: u8,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Period, StatementError> {
        let bad = || StatementError::BadPeriod(text.to_string());
        let (y, m) = text.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if !(1970..=9998).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }

    /// The month holding a Unix-millisecond instant.
    pub fn of_ms(ms: i64) -> Period {
        let days = ms.div_euclid(MS_PER_DAY);
        let date = Date::from_julian_day((days + 2_440_588) as i32).unwrap_or(Date::MIN);
        Period {
            year: date.year(),
            month: u8::from(date.month()),
        }
    }

    fn first_day(self) -> Date {
        let month = Month::try_from(self.month).unwrap_or(Month::January);
        Date::from_calendar_date(self.year, month, 1).unwrap_or(Date::MIN)
    }

    /// First instant of the month (Unix ms).
    pub fn start_ms(self) -> i64 {
        (i64::from(self.first_day().to_julian_day()) - 2_440_588) * MS_PER_DAY
    }

    /// First instant after the month (Unix ms).
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    pub fn next(self) -> Period {
        if self.month == 12 {
            Period {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Period {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Period {
        if self.month == 1 {
            Period {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Period {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// `YYYY-MM-DD` of a Unix-millisecond instant, UTC.
pub fn date_label(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let date = Date::from_julian_day((days + 2_440_588) as i32).unwrap_or(Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Unix ms of UTC midnight of a `YYYY-MM-DD` date.
pub fn parse_date(text: &str) -> Result<i64, StatementError> {
    let bad = || StatementError::BadDate(text.to_string());
    let mut parts = text.trim().splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let day: u8 = d.parse().map_err(|_| bad())?;
    if !(1970..=9998).contains(&year) {
        return Err(bad());
    }
    let month = Month::try_from(month).map_err(|_| bad())?;
    let date = Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    Ok((i64::from(date.to_julian_day()) - 2_440_588) * MS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        let oct = Period::parse("2026-10").unwrap();
        assert_eq!(oct.to_string(), "2026-10");
        assert_eq!(oct.start_ms(), parse_date("2026-10-01").unwrap());
        assert_eq!(oct.end_ms(), parse_date("2026-11-01").unwrap());
        assert_eq!(Period::of_ms(oct.end_ms() - 1), oct);
        assert_eq!(Period::of_ms(oct.end_ms()), oct.next());
        assert_eq!(
            Period::parse("2026-12").unwrap().next().to_string(),
            "2027-01"
        );
        assert_eq!(
            Period::parse("2027-01").unwrap().prev().to_string(),
            "2026-12"
        );
        assert_eq!(date_label(oct.start_ms()), "2026-10-01");
        // 2026-11-27 is day 20_784.
        assert_eq!(parse_date("2026-11-27").unwrap(), 20_784 * MS_PER_DAY);
        for bad in ["2026-13", "2026-1", "26-10", "2026/10", "", "2026-00"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        for bad in ["2026-02-30", "2026-1-", "x"] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
