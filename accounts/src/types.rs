//! Values parsed at the boundary. Each type can only hold a valid value: the constructors are
//! the only way in, and each says in words a person understands what was wrong.

use serde::{Deserialize, Serialize};

use crate::AccountError;

/// A normalised email address (trimmed, lower-case), as stored and compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, AccountError> {
        let email = raw.trim().to_lowercase();
        let invalid = || {
            AccountError::field(
                "email",
                "Enter a valid email address, like name@example.com.",
            )
        };
        if email.is_empty() {
            return Err(AccountError::field("email", "Enter your email address."));
        }
        if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid());
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortest accepted password, in characters (NIST SP 800-63B, OWASP ASVS 5.0 V6.2).
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Longest accepted password. Far above the 64 the standards ask us to allow; the cap only
/// bounds the work of hashing. Longer input is refused, never truncated.
pub const PASSWORD_MAX_CHARS: usize = 256;

/// A password that meets the policy: length only, no composition rules, and not among the
/// passwords that attackers try first. Deliberately neither `Serialize` nor `Debug`-printable.
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str, context: &[&str]) -> Result<NewPassword, AccountError> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(AccountError::field(
                "password",
                "Use at least 8 characters (15 or more is better; a phrase of a few words works well).",
            ));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(AccountError::field(
                "password",
                "Use at most 256 characters.",
            ));
        }
        if is_common_password(raw, context) {
            return Err(AccountError::field(
                "password",
                "This password is too common or too easy to guess. Try a longer phrase.",
            ));
        }
        Ok(NewPassword(raw.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

/// Common or trivially guessable: zxcvbn's estimate is under a million guesses. Its
/// dictionaries include the most common leaked passwords, keyboard walks, repeats, dates and
/// the user's own email and organisation name (passed as `context`), so "password1",
/// "qwertyuiop" and "acme-2026" are all refused while any long phrase passes.
fn is_common_password(raw: &str, context: &[&str]) -> bool {
    // Beyond 64 characters the estimate is always far above the bar; skip its quadratic cost.
    if raw.chars().count() > 64 {
        return false;
    }
    zxcvbn::zxcvbn(raw, context).guesses_log10() < 6.0
}

/// The kinds of organisation. Tenants choose one of the first five at sign-up; partners are
/// created by operators; `Platform` holds the operators themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrgKind {
    Startup,
    ModelBuilder,
    Enterprise,
    Research,
    Regional,
    Partner,
    Platform,
}

impl OrgKind {
    pub const TENANT_KINDS: [OrgKind; 5] = [
        OrgKind::Startup,
        OrgKind::ModelBuilder,
        OrgKind::Enterprise,
        OrgKind::Research,
        OrgKind::Regional,
    ];

    pub fn code(self) -> &'static str {
        match self {
            OrgKind::Startup => "startup",
            OrgKind::ModelBuilder => "model_builder",
            OrgKind::Enterprise => "enterprise",
            OrgKind::Research => "research",
            OrgKind::Regional => "regional",
            OrgKind::Partner => "partner",
            OrgKind::Platform => "platform",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            OrgKind::Startup => "Startup",
            OrgKind::ModelBuilder => "Model builder",
            OrgKind::Enterprise => "Enterprise",
            OrgKind::Research => "Research organisation",
            OrgKind::Regional => "Regional AI player",
            OrgKind::Partner => "AI cloud partner",
            OrgKind::Platform => "Platform operator",
        }
    }

    pub fn from_code(code: &str) -> Option<OrgKind> {
        [
            OrgKind::Startup,
            OrgKind::ModelBuilder,
            OrgKind::Enterprise,
            OrgKind::Research,
            OrgKind::Regional,
            OrgKind::Partner,
            OrgKind::Platform,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }

    /// A kind a person may pick when signing up (not partner or platform).
    pub fn parse_tenant(code: &str) -> Result<OrgKind, AccountError> {
        OrgKind::from_code(code.trim())
            .filter(|k| OrgKind::TENANT_KINDS.contains(k))
            .ok_or_else(|| {
                AccountError::field("org_kind", "Choose what kind of organisation this is.")
            })
    }
}

/// Where an organisation is based: the regions that credit-support programs and factories are
/// defined for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Region {
    NorthAmerica,
    LatinAmerica,
    Europe,
    MiddleEast,
    Africa,
    SouthAsia,
    EastAsia,
    SoutheastAsia,
    Oceania,
}

impl Region {
    pub const ALL: [Region; 9] = [
        Region::NorthAmerica,
        Region::LatinAmerica,
        Region::Europe,
        Region::MiddleEast,
        Region::Africa,
        Region::SouthAsia,
        Region::EastAsia,
        Region::SoutheastAsia,
        Region::Oceania,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Region::NorthAmerica => "north_america",
            Region::LatinAmerica => "latin_america",
            Region::Europe => "europe",
            Region::MiddleEast => "middle_east",
            Region::Africa => "africa",
            Region::SouthAsia => "south_asia",
            Region::EastAsia => "east_asia",
            Region::SoutheastAsia => "southeast_asia",
            Region::Oceania => "oceania",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Region::NorthAmerica => "North America",
            Region::LatinAmerica => "Latin America and the Caribbean",
            Region::Europe => "Europe",
            Region::MiddleEast => "Middle East",
            Region::Africa => "Africa",
            Region::SouthAsia => "South Asia",
            Region::EastAsia => "East Asia",
            Region::SoutheastAsia => "Southeast Asia",
            Region::Oceania => "Oceania",
        }
    }

    pub fn from_code(code: &str) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn parse(code: &str) -> Result<Region, AccountError> {
        Region::from_code(code.trim())
            .ok_or_else(|| AccountError::field("region", "Choose the region you are based in."))
    }
}

/// An organisation's display name: trimmed, 2 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(raw: &str) -> Result<OrgName, AccountError> {
        let name = raw.trim();
        let len = name.chars().count();
        if len == 0 {
            return Err(AccountError::field(
                "org_name",
                "Enter your organisation's name.",
            ));
        }
        if !(2..=100).contains(&len) || name.chars().any(char::is_control) {
            return Err(AccountError::field(
                "org_name",
                "Use 2 to 100 characters for the organisation name.",
            ));
        }
        Ok(OrgName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user's role inside their organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrgRole {
    Owner,
    Member,
}

impl OrgRole {
    pub fn code(self) -> &'static str {
        match self {
            OrgRole::Owner => "owner",
            OrgRole::Member => "member",
        }
    }

    pub fn from_code(code: &str) -> Option<OrgRole> {
        match code {
            "owner" => Some(OrgRole::Owner),
            "member" => Some(OrgRole::Member),
            _ => None,
        }
    }
}

/// A code read back from storage that this build does not know: a row it cannot read, not a
/// value to default.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {code:?} in storage")]
pub struct UnknownCode {
    what: &'static str,
    code: String,
}

/// Stored codes as types, for `sqlx::FromRow`.
macro_rules! try_from_code {
    ($ty:ty, $what:literal) => {
        impl TryFrom<String> for $ty {
            type Error = UnknownCode;

            fn try_from(code: String) -> Result<$ty, UnknownCode> {
                <$ty>::from_code(&code).ok_or(UnknownCode { what: $what, code })
            }
        }
    };
}

try_from_code!(OrgKind, "organisation kind");
try_from_code!(Region, "region");
try_from_code!(OrgRole, "role");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_codes_read_back_as_their_types_and_unknown_ones_are_errors() {
        for r in Region::ALL {
            assert_eq!(Region::try_from(r.code().to_string()).unwrap(), r);
        }
        assert_eq!(
            OrgKind::try_from("partner".to_string()).unwrap(),
            OrgKind::Partner
        );
        assert_eq!(
            OrgRole::try_from("owner".to_string()).unwrap(),
            OrgRole::Owner
        );
        let e = Region::try_from("atlantis".to_string()).unwrap_err();
        assert_eq!(e.to_string(), "unknown region \"atlantis\" in storage");
        assert!(OrgKind::try_from("Startup".to_string()).is_err());
        assert!(OrgRole::try_from(String::new()).is_err());
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_password_shorter_than_eight_characters_is_rejected() {
        assert!(NewPassword::parse("zq7#Lm2", &[]).is_err());
    }

    #[test]
    fn common_passwords_are_rejected() {
        for common in [
            "password",
            "password1",
            "12345678",
            "qwertyuiop",
            "iloveyou",
            "letmein123",
        ] {
            assert!(
                NewPassword::parse(common, &[]).is_err(),
                "{common} accepted"
            );
        }
    }

    #[test]
    fn a_password_made_of_the_users_own_details_is_rejected() {
        assert!(NewPassword::parse("acmerobotics", &["acmerobotics"]).is_err());
    }

    #[test]
    fn long_passphrases_pass_without_composition_rules() {
        assert!(NewPassword::parse("correct horse battery staple", &[]).is_ok());
        assert!(NewPassword::parse(&"long phrase ".repeat(8), &[]).is_ok());
        assert!(NewPassword::parse(&"x".repeat(257), &[]).is_err());
    }

    #[test]
    fn a_64_character_password_is_accepted_whole() {
        let pw: String = "tokenmill-passphrase-".repeat(4).chars().take(64).collect();
        assert_eq!(
            NewPassword::parse(&pw, &[])
                .unwrap()
                .expose()
                .chars()
                .count(),
            64
        );
    }

    #[test]
    fn only_tenant_kinds_can_be_chosen_at_sign_up() {
        assert_eq!(OrgKind::parse_tenant("startup").unwrap(), OrgKind::Startup);
        assert!(OrgKind::parse_tenant("partner").is_err());
        assert!(OrgKind::parse_tenant("platform").is_err());
        assert!(OrgKind::parse_tenant("").is_err());
    }
}
