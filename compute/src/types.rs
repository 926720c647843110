//! Compute-request inputs parsed at the boundary into values that cannot be wrong.

use crate::ComputeError;

fn field(field: &'static str, message: &str) -> ComputeError {
    ComputeError::Field {
        field,
        message: message.to_string(),
    }
}

pub const DAY_MS: i64 = 86_400_000;

/// A calendar day (UTC), stored as the milliseconds of its midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(i64);

impl Day {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str, name: &'static str) -> Result<Day, ComputeError> {
        let bad = || field(name, "Enter a date as YYYY-MM-DD.");
        let mut parts = text.trim().splitn(3, '-');
        let mut next = |len: usize| {
            parts
                .next()
                .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<i32>().ok())
                .ok_or_else(bad)
        };
        let (y, m, d) = (next(4)?, next(2)?, next(2)?);
        let month =
            time::Month::try_from(u8::try_from(m).map_err(|_| bad())?).map_err(|_| bad())?;
        let date = time::Date::from_calendar_date(y, month, u8::try_from(d).map_err(|_| bad())?)
            .map_err(|_| field(name, "That date does not exist."))?;
        Ok(Day(
            i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY) * DAY_MS
        ))
    }

    /// The day containing the instant `ms`.
    pub fn containing(ms: i64) -> Day {
        Day(ms.div_euclid(DAY_MS) * DAY_MS)
    }

    pub fn from_ms(ms: i64) -> Day {
        Day::containing(ms)
    }

    pub fn ms(self) -> i64 {
        self.0
    }

    pub fn days_until(self, later: Day) -> i64 {
        (later.0 - self.0) / DAY_MS
    }
}

const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jd = i32::try_from(self.0 / DAY_MS).unwrap_or(0) + UNIX_EPOCH_JULIAN_DAY;
        match time::Date::from_julian_day(jd) {
            Ok(d) => write!(
                f,
                "{:04}-{:02}-{:02}",
                d.year(),
                u8::from(d.month()),
                d.day()
            ),
            Err(_) => write!(f, "?"),
        }
    }
}

/// The accelerator a factory is built from (`Cpu`: no accelerator, as a laptop's local factory
/// serving the CPU backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuClass {
    Cpu,
    A100,
    L40S,
    H100,
    H200,
    B200,
    GB200,
}

impl GpuClass {
    pub const ALL: [GpuClass; 7] = [
        GpuClass::Cpu,
        GpuClass::A100,
        GpuClass::L40S,
        GpuClass::H100,
        GpuClass::H200,
        GpuClass::B200,
        GpuClass::GB200,
    ];

    pub fn code(self) -> &'static str {
        match self {
            GpuClass::Cpu => "CPU",
            GpuClass::A100 => "A100",
            GpuClass::L40S => "L40S",
            GpuClass::H100 => "H100",
            GpuClass::H200 => "H200",
            GpuClass::B200 => "B200",
            GpuClass::GB200 => "GB200",
        }
    }

    pub fn from_code(code: &str) -> Option<GpuClass> {
        GpuClass::ALL.into_iter().find(|g| g.code() == code.trim())
    }
}

/// A model id as served by a factory: `org/name` style, lowercase letters, digits and `.-_/`.
pub fn parse_model_id(text: &str) -> Result<String, ComputeError> {
    let id = text.trim();
    let ok = (1..=100).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(field(
            "models",
            "Model ids use letters, digits and . - _ / : (up to 100 characters).",
        ))
    }
}

/// What is asked for: a model's throughput, or whole GPUs of the factory's class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    Tokens {
        model: String,
        tokens_per_minute: i64,
    },
    Gpus {
        count: i64,
    },
}

pub const MAX_TOKENS_PER_MINUTE: i64 = 1_000_000_000;
pub const MAX_GPUS: i64 = 10_000;

impl Capacity {
    /// `what` is a model id, or `gpus` for dedicated GPUs; `amount` is tokens per minute or a
    /// GPU count.
    pub fn parse(what: &str, amount: &str) -> Result<Capacity, ComputeError> {
        let what = what.trim();
        if what.is_empty() {
            return Err(field("what", "Choose a model or dedicated GPUs."));
        }
        let n: i64 = amount
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| field("amount", "Enter a whole number."))?;
        if what == "gpus" {
            if !(1..=MAX_GPUS).contains(&n) {
                return Err(field("amount", "Ask for 1 to 10,000 GPUs."));
            }
            Ok(Capacity::Gpus { count: n })
        } else {
            if !(1_000..=MAX_TOKENS_PER_MINUTE).contains(&n) {
                return Err(field(
                    "amount",
                    "Ask for 1,000 to 1,000,000,000 tokens per minute.",
                ));
            }
            Ok(Capacity::Tokens {
                model: parse_model_id(what).map_err(|_| field("what", "Unknown model."))?,
                tokens_per_minute: n,
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commitment {
    Reserved,
    OnDemand,
}

impl Commitment {
    pub fn code(self) -> &'static str {
        match self {
            Commitment::Reserved => "reserved",
            Commitment::OnDemand => "on_demand",
        }
    }

    pub fn parse(text: &str) -> Result<Commitment, ComputeError> {
        match text.trim() {
            "reserved" => Ok(Commitment::Reserved),
            "on_demand" => Ok(Commitment::OnDemand),
            _ => Err(field("commitment", "Choose reserved or on-demand.")),
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Submitted,
    ChangesRequested,
    Approved,
    Rejected,
    Active,
    Ended,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Submitted,
        Status::ChangesRequested,
        Status::Approved,
        Status::Rejected,
        Status::Active,
        Status::Ended,
        Status::Cancelled,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::ChangesRequested => "changes_requested",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Active => "active",
            Status::Ended => "ended",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Status::Submitted => "Submitted",
            Status::ChangesRequested => "Changes requested",
            Status::Approved => "Approved",
            Status::Rejected => "Rejected",
            Status::Active => "Active",
            Status::Ended => "Ended",
            Status::Cancelled => "Cancelled",
        }
    }

    pub fn from_code(code: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// A reason given with a rejection or a request for changes.
pub fn parse_reason(text: &str) -> Result<String, ComputeError> {
    let reason = text.trim();
    if !(3..=2000).contains(&reason.chars().count()) {
        return Err(field("reason", "Give a reason (3 to 2,000 characters)."));
    }
    Ok(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_and_print() {
        let d = Day::parse("2026-11-26", "start").unwrap();
        assert_eq!(d.ms(), 1_795_651_200_000);
        assert_eq!(d.to_string(), "2026-11-26");
        assert_eq!(
            Day::parse("2024-02-29", "s").unwrap().to_string(),
            "2024-02-29"
        );
        assert!(Day::parse("2025-02-29", "s").is_err());
        assert!(Day::parse("26-11-2026", "s").is_err());
        assert!(Day::parse("2026-1-5", "s").is_err());
        assert_eq!(Day::containing(d.ms() + DAY_MS - 1), d);
    }

    #[test]
    fn capacity_bounds() {
        assert!(Capacity::parse("gpus", "0").is_err());
        assert!(Capacity::parse("gpus", "-3").is_err());
        assert!(Capacity::parse("m/x", "999").is_err());
        assert!(Capacity::parse("m/x", "1e9").is_err());
        assert_eq!(
            Capacity::parse("gpus", "8").unwrap(),
            Capacity::Gpus { count: 8 }
        );
        assert_eq!(
            Capacity::parse("tiny/llama", "50_000").unwrap(),
            Capacity::Tokens {
                model: "tiny/llama".into(),
                tokens_per_minute: 50_000
            }
        );
    }
}
