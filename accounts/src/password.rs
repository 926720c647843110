//! Password hashing with argon2id at OWASP's parameters, always off the async runtime.

use std::sync::{
    LazyLock,
    atomic::{AtomicU64, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::AccountError;

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A stored password hash (PHC string). Not `Serialize`: it never leaves the server.
#[derive(Clone)]
pub struct PasswordHashString(pub(crate) String);

impl std::fmt::Debug for PasswordHashString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHashString(***)")
    }
}

impl PasswordHashString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A hash of a random password, verified against when the email is unknown so that a login for
/// a missing account costs the same time as one for a real account.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(b"tokenmill dummy password for timing", &salt)
        .expect("hashing a constant succeeds")
        .to_string()
});

pub async fn hash(password: String) -> Result<PasswordHashString, AccountError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| PasswordHashString(h.to_string()))
            .map_err(|e| AccountError::Internal(format!("hashing failed: {e}")))
    })
    .await
    .map_err(|e| AccountError::Internal(format!("hashing task failed: {e}")))?
}

/// How many password verifications (real or dummy) this process has run: each login attempt
/// that reaches the password check costs exactly one, whether or not the account exists.
static VERIFICATIONS: AtomicU64 = AtomicU64::new(0);

pub fn verifications() -> u64 {
    VERIFICATIONS.load(Ordering::Relaxed)
}

/// Verifies `password` against `stored`, or against a dummy hash when there is no account.
/// Returns true only for a real account whose hash matches.
pub async fn verify(
    password: String,
    stored: Option<PasswordHashString>,
) -> Result<bool, AccountError> {
    tokio::task::spawn_blocking(move || {
        let (phc, real) = match &stored {
            Some(h) => (h.0.as_str(), true),
            None => (DUMMY_HASH.as_str(), false),
        };
        let parsed = PasswordHash::new(phc)
            .map_err(|e| AccountError::Internal(format!("stored hash unreadable: {e}")))?;
        let ok = argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        VERIFICATIONS.fetch_add(1, Ordering::Relaxed);
        Ok(ok && real)
    })
    .await
    .map_err(|e| AccountError::Internal(format!("verify task failed: {e}")))?
}

/// Warms the dummy hash so that the first login for an unknown email is not faster than usual.
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters() {
        let h = hash("a fine passphrase".into()).await.unwrap();
        assert!(
            h.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            h.as_str()
        );
        assert!(
            verify("a fine passphrase".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("a wrong passphrase".into(), Some(h)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(
            !verify("tokenmill dummy password for timing".into(), None)
                .await
                .unwrap()
        );
    }
}
