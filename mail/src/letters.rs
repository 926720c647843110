//! The letters themselves: short, plain, each link alone on its line, and saying what to do
//! when the reader did not ask for the letter.

use crate::Letter;

const SIGN_OFF: &str = "-- \nTokenmill\n";

/// The link that verifies a new account's address.
pub fn verify_email(to: &str, org_name: &str, link: &str, valid_hours: i64) -> Letter {
    Letter {
        to: to.to_string(),
        subject: "Verify your email address for Tokenmill".into(),
        body: format!(
            "Welcome to Tokenmill.\n\n\
             Open this link to verify your email address for {org_name}:\n\n\
             {link}\n\n\
             Until it is verified you can look around, but no credits are granted, no API \
             keys made and no jobs run. The link works once, for {valid_hours} hours; a new \
             one can be sent from the dashboard.\n\n\
             If you did not sign up, ignore this letter: nothing happens without the link.\n\n\
             {SIGN_OFF}"
        ),
    }
}

/// The link that sets a new password.
pub fn reset_password(to: &str, link: &str, valid_minutes: i64) -> Letter {
    Letter {
        to: to.to_string(),
        subject: "Reset your Tokenmill password".into(),
        body: format!(
            "Someone (we hope you) asked to reset the password of your Tokenmill account.\n\n\
             Open this link to choose a new password:\n\n\
             {link}\n\n\
             The link works once, for {valid_minutes} minutes. Setting a new password signs \
             you out everywhere.\n\n\
             If you did not ask for this, ignore this letter: your password stays as it is.\n\n\
             {SIGN_OFF}"
        ),
    }
}

/// Sent instead of a verification link when someone signs up with an address that already
/// has an account: the page answered exactly as for a new sign-up.
pub fn already_registered(to: &str, login_link: &str, reset_link: &str) -> Letter {
    Letter {
        to: to.to_string(),
        subject: "You already have a Tokenmill account".into(),
        body: format!(
            "Someone (we hope you) tried to sign up for Tokenmill with this address, which \
             already has an account. Nothing was changed.\n\n\
             To log in:\n\n\
             {login_link}\n\n\
             If you forgot your password, set a new one here:\n\n\
             {reset_link}\n\n\
             If it was not you, ignore this letter.\n\n\
             {SIGN_OFF}"
        ),
    }
}

/// An invitation to join an organisation.
pub fn invitation(to: &str, org_name: &str, role: &str, inviter: &str, link: &str) -> Letter {
    Letter {
        to: to.to_string(),
        subject: format!("Join {org_name} on Tokenmill"),
        body: format!(
            "{inviter} invited you to join {org_name} on Tokenmill as {role}.\n\n\
             Open this link to accept and choose your password:\n\n\
             {link}\n\n\
             The link works once, for 7 days. If you do not know {org_name}, ignore this \
             letter.\n\n\
             {SIGN_OFF}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_stands_on_a_line_of_its_own() {
        let l = already_registered("a@b.co", "http://x/login", "http://x/forgot");
        assert!(l.body.lines().any(|line| line == "http://x/login"));
        assert!(l.body.lines().any(|line| line == "http://x/forgot"));
        let l = verify_email("a@b.co", "Acme", "http://x/verify/t", 48);
        assert!(l.body.lines().any(|line| line == "http://x/verify/t"));
        assert!(l.body.contains("48 hours"));
    }
}
