//! Password checks at CONNECT that a flood of wrong passwords cannot grind down.
//!
//! An argon2id check costs tens of milliseconds of a core and 19 MiB by design, so what stands
//! in front of it decides who waits. In order:
//! 1. **Remembered**: the same user name and password checked right in the last five minutes
//!    (keyed by a SHA-256 digest, never the password) pass at once, whatever else is going on:
//!    nothing here slows a client that has proved its password.
//! 2. **Backoff**: an address (IPv6: its /64) with more than
//!    `limits.auth_failures_before_backoff` recent failures, or a user name with failures from
//!    more addresses than that (each address counts once an hour: one address is held by its
//!    own backoff), is backed off for `auth_backoff_initial_secs`, doubling per failure up to
//!    `auth_backoff_max_secs`; its logins are refused ("Server busy") without a check. A user
//!    name's backoff spares the addresses the user logged in from in the last week, so a
//!    guesser elsewhere cannot lock a publisher out.
//! 3. **One check per login**: a login whose name and password are being checked right now
//!    waits for that check instead of queueing its own (a crowd of one user's clients costs
//!    one hash).
//! 4. **Admission**: at most `limits.max_password_checks` checks waiting or running, at most
//!    `max_password_checks_per_address` of them from one address. Logins come in three kinds:
//!    *familiar* (the user logged in from this address before), *suspect* (from an address or
//!    for a user name with recent failures) and *clean* (the rest). A quarter of the queue is
//!    kept for familiar logins, and suspect ones may take half at most. Beyond, "Server
//!    unavailable" at once: a bounded wait, never a queue that grows.
//! 5. **The check**: one per core at a time, in order of arrival, except that clean checks
//!    pass a gate of one permit per core, and suspect checks a gate of one, before they queue
//!    for a core. So a clean login waits behind at most one suspect check, and a familiar one
//!    (a publisher reconnecting from its usual address) behind at most one per core and one
//!    suspect, besides those running, however many strangers flood the queue.
//!
//! The check runs on a blocking thread that holds its core and records the outcome itself: a
//! connection that gives up (its handshake deadline, `limits.connect_timeout_secs`) frees
//! neither a core that is still hashing nor itself from the failure it caused.
//!
//! Depends on [`crate::auth`] (the users file, argon2), the limits and the broker's counters;
//! the tables, plain data over a clock, are in `records`.

mod records;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::stats::{self, AuthStats};
use crate::auth::{AuthFailure, Identity, Users};
use crate::config::Limits;
use records::{Bounded, Failures, Policy, Source};

/// How long a successful check is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// How long an address a user logged in from spares it the user's own backoff.
const FAMILIAR: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often one address's failures count for a user name: a user name's backoff answers
/// guesses from many addresses (one address is held by its own), so each address counts once.
const RECOUNT: Duration = Duration::from_secs(3600);

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// Unknown user or wrong password (checked): CONNACK 0x86, 3.1.1 return code 4.
    #[error("bad user name or password")]
    BadCredentials,
    /// The address or the user name is backed off after failures; nothing was checked:
    /// CONNACK 0x89 Server busy, 3.1.1 return code 3.
    #[error("backing off after failed logins from this address or for this user name")]
    BackingOff,
    /// Too many checks waiting (in all, from the address, or suspect); nothing was checked:
    /// CONNACK 0x88 Server unavailable, 3.1.1 return code 3.
    #[error(
        "too many password checks waiting (limits.max_password_checks, \
         max_password_checks_per_address)"
    )]
    Busy,
}

impl From<AuthFailure> for LoginRefusal {
    fn from(_: AuthFailure) -> LoginRefusal {
        LoginRefusal::BadCredentials
    }
}

/// What a check concluded.
type Verdict = Result<Identity, AuthFailure>;

/// Runs, bounds and remembers password checks.
#[derive(Debug)]
pub(crate) struct PasswordChecks {
    /// Shared with the blocking threads that run the checks.
    inner: Arc<Inner>,
}

/// The checks' state, shared with the threads that run them.
#[derive(Debug)]
struct Inner {
    /// The users file.
    users: Arc<Users>,
    /// Most checks waiting or running (`limits.max_password_checks`).
    max_pending: usize,
    /// Most of them from one address (`limits.max_password_checks_per_address`).
    max_per_source: usize,
    /// Failures allowed before backoff, for the log line that says a backoff starts.
    free_failures: u32,
    /// One permit per core: checks running at once.
    cores: Arc<Semaphore>,
    /// One permit per core: the clean checks allowed to queue for a core.
    clean_gate: Semaphore,
    /// One permit: the suspect check allowed to queue for a core.
    suspect_gate: Semaphore,
    /// The tables and counts, locked briefly (never across an await or a hash).
    state: Mutex<State>,
    /// Counters, also read by `$SYS` and `/metrics`.
    stats: Arc<AuthStats>,
    /// Keys user names in the tables: a name may be 64 KiB, its key is 8 bytes; random per
    /// process so that nobody can pick names that share a record.
    names: RandomState,
}

/// What the checks remember and count.
#[derive(Debug)]
struct State {
    /// Logins checked right: digest of name and password, when.
    remembered: Bounded<[u8; 32], Instant>,
    /// Failures by address.
    sources: Failures<Source>,
    /// Failures by user name (its key).
    users: Failures<u64>,
    /// When each user (its key) last logged in from each address.
    familiar: Bounded<(u64, Source), Instant>,
    /// When an address's failure last counted for a user name (its key).
    tried: Bounded<(u64, Source), Instant>,
    /// Checks waiting or running.
    pending: usize,
    /// Of them, those not familiar (clean and suspect).
    strangers: usize,
    /// Of them, suspect ones.
    suspects: usize,
    /// Of them, by address (no entry for none).
    by_source: HashMap<Source, usize>,
    /// The checks waiting or running, by digest of name and password, for logins that come
    /// meanwhile with the same ones.
    checking: HashMap<[u8; 32], watch::Receiver<Option<Verdict>>>,
    /// Whether the full queue was logged (once per run).
    warned_full: bool,
}

/// One login, as the tables know it.
#[derive(Debug, Clone, Copy)]
struct Login {
    /// Digest of name and password.
    key: [u8; 32],
    /// Where it comes from.
    source: Source,
    /// Its user name's key.
    user: u64,
}

/// What kind of login a check is for: it decides its share of the queue and its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The user logged in right from this address in the last week.
    Familiar,
    /// Neither familiar nor suspect.
    Clean,
    /// From an address, or for a user name, with recent failures.
    Suspect,
}

/// What admission decided for a login that may go on.
enum Admitted {
    /// Checked right recently: this identity.
    Remembered(Identity),
    /// The same name and password are being checked: wait for that verdict.
    Follow(watch::Receiver<Option<Verdict>>),
    /// Check it.
    Check(Ticket),
}

/// A check admitted: its place in the counts, released when dropped (given up, or done).
struct Ticket {
    /// Where the counts are.
    inner: Arc<Inner>,
    /// The login checked.
    login: Login,
    /// What kind of login it was admitted as.
    kind: Kind,
    /// Tells the logins that follow it the verdict.
    done: watch::Sender<Option<Verdict>>,
}

impl PasswordChecks {
    /// Checks of `users`' passwords, bounded by `limits`, counted in `stats`.
    pub(crate) fn new(users: Arc<Users>, limits: &Limits, stats: Arc<AuthStats>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let records = usize::try_from(limits.max_auth_records).unwrap_or(usize::MAX);
        let policy = Policy {
            free: limits.auth_failures_before_backoff,
            initial: Duration::from_secs(limits.auth_backoff_initial_secs),
            max: Duration::from_secs(limits.auth_backoff_max_secs),
        };
        let state = State {
            remembered: Bounded::new(records),
            sources: Failures::new(policy, records),
            users: Failures::new(policy, records),
            familiar: Bounded::new(records),
            tried: Bounded::new(records),
            pending: 0,
            strangers: 0,
            suspects: 0,
            by_source: HashMap::new(),
            checking: HashMap::new(),
            warned_full: false,
        };
        PasswordChecks {
            inner: Arc::new(Inner {
                users,
                max_pending: usize::try_from(limits.max_password_checks).unwrap_or(usize::MAX),
                max_per_source: usize::try_from(limits.max_password_checks_per_address)
                    .unwrap_or(usize::MAX),
                free_failures: limits.auth_failures_before_backoff,
                cores: Arc::new(Semaphore::new(cores)),
                clean_gate: Semaphore::new(cores),
                suspect_gate: Semaphore::new(1),
                state: Mutex::new(state),
                stats,
                names: RandomState::new(),
            }),
        }
    }

    /// Who a client connecting from `ip` is, from its CONNECT user name and password.
    ///
    /// # Errors
    /// [`LoginRefusal::BadCredentials`] for unknown users and wrong passwords;
    /// [`LoginRefusal::BackingOff`] and [`LoginRefusal::Busy`] for logins refused unchecked.
    pub(crate) async fn check(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, LoginRefusal> {
        let (Some(name), Some(secret)) = (username, password) else {
            // Anonymous, or a refusal that needs no hash.
            return Ok(self.inner.users.authenticate(username, password)?);
        };
        let login = Login {
            key: digest(name, secret),
            source: Source::of(ip),
            user: self.inner.names.hash_one(name),
        };
        match self.inner.admit(login, name)? {
            Admitted::Remembered(identity) => Ok(identity),
            Admitted::Follow(mut verdict) => match verdict.wait_for(Option::is_some).await {
                Ok(verdict) => Ok(verdict
                    .clone()
                    .unwrap_or(Err(AuthFailure::BadCredentials))?),
                // The check was given up before it ran (its connection's deadline passed).
                Err(_) => Err(LoginRefusal::Busy),
            },
            Admitted::Check(ticket) => self.run(ticket, name, secret).await,
        }
    }

    /// Waits for a core (clean and suspect logins through their gate first), then checks on
    /// a blocking thread that holds the core and records the outcome, whether or not this
    /// future is still awaited by then.
    async fn run(
        &self,
        ticket: Ticket,
        name: &str,
        secret: &[u8],
    ) -> Result<Identity, LoginRefusal> {
        let gate = match ticket.kind {
            Kind::Familiar => None,
            Kind::Clean => Some(&self.inner.clean_gate),
            Kind::Suspect => Some(&self.inner.suspect_gate),
        };
        let gate = match gate {
            Some(gate) => Some(gate.acquire().await.map_err(|_| LoginRefusal::Busy)?),
            None => None,
        };
        let core = self
            .inner
            .cores
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LoginRefusal::Busy)?;
        drop(gate);
        let (name, secret) = (name.to_owned(), secret.to_vec());
        let inner = self.inner.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let _core = core;
            inner.check(ticket, &name, &secret)
        })
        .await
        .unwrap_or(Err(AuthFailure::BadCredentials));
        Ok(verdict?)
    }
}

impl Inner {
    /// The state, even if a thread panicked while holding it (its counts stay usable).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a login is let in, refused unchecked, or checked (steps 1-4 of the
    /// module's list).
    fn admit(self: &Arc<Self>, login: Login, name: &str) -> Result<Admitted, LoginRefusal> {
        let now = now();
        let mut state = self.lock();
        let fresh = |at: Option<&Instant>, within| at.is_some_and(|at| now < *at + within);
        if fresh(state.remembered.get(&login.key), REMEMBER) {
            if let Some(identity) = self.users.identity_of(name) {
                return Ok(Admitted::Remembered(identity));
            }
        }
        let familiar = fresh(state.familiar.get(&(login.user, login.source)), FAMILIAR);
        if state.sources.backing_off(&login.source, now)
            || (!familiar && state.users.backing_off(&login.user, now))
        {
            stats::add(&self.stats.refused_backoff, 1);
            return Err(LoginRefusal::BackingOff);
        }
        if let Some(verdict) = state.checking.get(&login.key) {
            return Ok(Admitted::Follow(verdict.clone()));
        }
        let kind = if familiar {
            Kind::Familiar
        } else if state.sources.suspect(&login.source, now) || state.users.suspect(&login.user, now)
        {
            Kind::Suspect
        } else {
            Kind::Clean
        };
        let from_source = state.by_source.get(&login.source).copied().unwrap_or(0);
        let full = state.pending >= self.max_pending;
        let strangers_full =
            kind != Kind::Familiar && state.strangers >= self.max_pending - self.max_pending / 4;
        let suspects_full =
            kind == Kind::Suspect && state.suspects >= (self.max_pending / 2).max(1);
        if full || from_source >= self.max_per_source || strangers_full || suspects_full {
            stats::add(&self.stats.refused_busy, 1);
            if (full || strangers_full) && !std::mem::replace(&mut state.warned_full, true) {
                tracing::warn!(
                    "{} password checks are waiting (limits.max_password_checks): further \
                     logins are answered Server unavailable until they are done (logged once)",
                    state.pending
                );
            }
            return Err(LoginRefusal::Busy);
        }
        state.pending += 1;
        state.strangers += usize::from(kind != Kind::Familiar);
        state.suspects += usize::from(kind == Kind::Suspect);
        *state.by_source.entry(login.source).or_insert(0) += 1;
        stats::set(&self.stats.pending, state.pending as u64);
        let (done, verdict) = watch::channel(None);
        state.checking.insert(login.key, verdict);
        Ok(Admitted::Check(Ticket {
            inner: self.clone(),
            login,
            kind,
            done,
        }))
    }

    /// Checks the password (on a blocking thread), records the outcome and tells the logins
    /// that wait for it.
    fn check(&self, ticket: Ticket, name: &str, secret: &[u8]) -> Verdict {
        stats::add(&self.stats.checks, 1);
        let verdict = self.users.authenticate(Some(name), Some(secret));
        let now = now();
        let login = ticket.login;
        let mut state = self.lock();
        if verdict.is_ok() {
            state
                .remembered
                .insert(login.key, now, |at| now >= *at + REMEMBER, |at| *at);
            state.familiar.insert(
                (login.user, login.source),
                now,
                |at| now >= *at + FAMILIAR,
                |at| *at,
            );
            // A typo, then the right password: the address starts afresh. The user name
            // does not (the failures may have come from elsewhere).
            state.sources.forget(&login.source);
        } else {
            stats::add(&self.stats.failures, 1);
            let (failures, backoff) = state.sources.fail(login.source, now);
            if failures == self.free_failures.saturating_add(1) {
                tracing::info!(source = %login.source,
                    "{failures} failed logins in a row from this address: its logins are \
                     refused unchecked for {backoff:?}, longer after each further failure");
            }
            let pair = (login.user, login.source);
            let counted = state.tried.get(&pair).is_some_and(|at| now < *at + RECOUNT);
            if !counted {
                state
                    .tried
                    .insert(pair, now, |at| now >= *at + RECOUNT, |at| *at);
                let (failures, backoff) = state.users.fail(login.user, now);
                if failures == self.free_failures.saturating_add(1) {
                    tracing::info!(user = ?name,
                        "failed logins for this user name from {failures} addresses: its \
                         logins from addresses it never logged in from are refused unchecked \
                         for {backoff:?}, longer after each further address");
                }
            }
        }
        stats::set(&self.stats.tracked_addresses, state.sources.len() as u64);
        stats::set(&self.stats.tracked_users, state.users.len() as u64);
        drop(state);
        ticket.done.send_replace(Some(verdict.clone()));
        verdict
    }
}

impl Drop for Ticket {
    /// Gives the check's place back, done or given up; logins still waiting for a verdict
    /// it never gave are refused as busy.
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.pending = state.pending.saturating_sub(1);
        if self.kind != Kind::Familiar {
            state.strangers = state.strangers.saturating_sub(1);
        }
        if self.kind == Kind::Suspect {
            state.suspects = state.suspects.saturating_sub(1);
        }
        if let Some(count) = state.by_source.get_mut(&self.login.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.by_source.remove(&self.login.source);
            }
        }
        state.checking.remove(&self.login.key);
        stats::set(&self.inner.stats.pending, state.pending as u64);
    }
}

#[cfg(test)]
impl PasswordChecks {
    /// Takes every core, so that admitted checks wait: for tests of what waits for them.
    pub(crate) fn hold_cores(&self) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        std::iter::from_fn(|| self.inner.cores.clone().try_acquire_owned().ok()).collect()
    }
}

/// The clock of the tables: Tokio's, so that tests may pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What remembered logins are keyed by: SHA-256 over the name's length, the name and the
/// password (the length keeps `ab`+`c` apart from `a`+`bc`).
fn digest(name: &str, secret: &[u8]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&(name.len() as u64).to_be_bytes());
    context.update(name.as_bytes());
    context.update(secret);
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests;
