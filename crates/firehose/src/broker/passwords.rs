//! Password checks at CONNECT, bounded and remembered.
//!
//! An argon2id check costs tens of milliseconds and about 19 MiB of memory by design; without a
//! bound, a crowd of clients connecting at once (or an attacker) would take every core and
//! gigabytes. At most one check per core runs at a time, and a successful check is remembered
//! for a few minutes (keyed by user and a SHA-256 digest of the password, never the password),
//! so clients that reconnect often cost one check, not one per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::auth::{AuthFailure, Identity, Users};

/// How long a successful check is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// Most remembered checks; the memory is forgotten wholesale beyond it.
const MAX_REMEMBERED: usize = 10_000;

/// Runs and remembers password checks.
#[derive(Debug)]
pub(crate) struct PasswordChecks {
    users: Arc<Users>,
    running: Semaphore,
    verified: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    /// Password hashes checked (argon2 runs): how the tests see that a crowd cost few.
    hashed: AtomicU64,
}

impl PasswordChecks {
    pub(crate) fn new(users: Arc<Users>) -> PasswordChecks {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordChecks {
            users,
            running: Semaphore::new(cores),
            verified: Mutex::new(HashMap::new()),
            hashed: AtomicU64::new(0),
        }
    }

    /// Who the client is, from its CONNECT user name and password.
    ///
    /// # Errors
    /// [`AuthFailure`] for unknown users and wrong passwords.
    pub(crate) async fn check(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, AuthFailure> {
        let (Some(user), Some(secret)) = (username, password) else {
            // Anonymous, or a refusal that needs no hash.
            return self.users.authenticate(username, password);
        };
        let key = (user.to_owned(), digest(secret));
        if let Some(identity) = self.remembered(&key) {
            return Ok(identity);
        }
        let Ok(_permit) = self.running.acquire().await else {
            return Err(AuthFailure::BadCredentials);
        };
        // Again after the wait: when a crowd of clients of one user connects at once, all but
        // the first few find the check done by then (100 publishers cost 100 argon2 checks,
        // seconds of a core, before this).
        if let Some(identity) = self.remembered(&key) {
            return Ok(identity);
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let users = self.users.clone();
        let (name, secret) = (user.to_owned(), secret.to_vec());
        let verdict =
            tokio::task::spawn_blocking(move || users.authenticate(Some(&name), Some(&secret)))
                .await
                .unwrap_or(Err(AuthFailure::BadCredentials));
        if verdict.is_ok() {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= MAX_REMEMBERED {
                verified.clear();
            }
            verified.insert(key, Instant::now());
        }
        verdict
    }

    /// The identity of a user whose password was checked recently with this digest.
    fn remembered(&self, key: &(String, [u8; 32])) -> Option<Identity> {
        let fresh = {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            verified.get(key).is_some_and(|at| at.elapsed() < REMEMBER)
        };
        fresh.then(|| self.users.identity_of(&key.0)).flatten()
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Arc<Users> {
        let hash = crate::auth::hash_password(b"secret").expect("hash");
        let text =
            format!("[[user]]\nname = \"pub\"\npassword = \"{hash}\"\npublish = [\"t/#\"]\n");
        Arc::new(Users::parse(&text).expect("users"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crowd_of_one_user_connecting_at_once_costs_few_hash_checks() {
        let checks = Arc::new(PasswordChecks::new(users()));
        let crowd: Vec<_> = (0..20)
            .map(|_| {
                let checks = checks.clone();
                tokio::spawn(async move { checks.check(Some("pub"), Some(b"secret")).await })
            })
            .collect();
        for client in crowd {
            let identity = client.await.expect("task").expect("right password");
            assert_eq!(identity.name(), "pub");
        }
        // At most one per permit ran before the first success was remembered.
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hashed = checks.hashed.load(Ordering::Relaxed);
        assert!(
            (1..=permits as u64).contains(&hashed),
            "{hashed} hash checks for 20 clients with {permits} permits"
        );
    }

    #[tokio::test]
    async fn right_password_is_remembered_and_wrong_one_never() {
        let checks = PasswordChecks::new(users());
        assert!(checks.check(Some("pub"), Some(b"wrong")).await.is_err());
        assert!(checks.verified.lock().expect("lock").is_empty());
        let identity = checks
            .check(Some("pub"), Some(b"secret"))
            .await
            .expect("ok");
        assert_eq!(identity.name(), "pub");
        assert_eq!(checks.verified.lock().expect("lock").len(), 1);
        // Remembered: the same pair again succeeds, another password still fails.
        assert!(checks.check(Some("pub"), Some(b"secret")).await.is_ok());
        assert!(checks.check(Some("pub"), Some(b"secret2")).await.is_err());
        assert!(checks
            .check(None, None)
            .await
            .expect("anonymous")
            .is_anonymous());
    }
}
