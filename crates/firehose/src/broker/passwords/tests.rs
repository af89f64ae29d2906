//! The password checks' rules, driven directly: the cores are held by the test where order
//! matters, so that what waits behind what is decided by the rules, not by timing.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::*;

fn users() -> Arc<Users> {
    static HASH: OnceLock<String> = OnceLock::new();
    let hash = HASH.get_or_init(|| crate::auth::hash_password(b"secret").expect("hash"));
    let text = format!("[[user]]\nname = \"pub\"\npassword = \"{hash}\"\npublish = [\"t/#\"]\n");
    Arc::new(Users::parse(&text).expect("users"))
}

/// Checks with these limits (backoffs long enough never to end during a test).
fn checks_with(limits: Limits) -> PasswordChecks {
    PasswordChecks::new(users(), &limits, Arc::default())
}

fn limits() -> Limits {
    Limits {
        auth_failures_before_backoff: 2,
        auth_backoff_initial_secs: 3600,
        auth_backoff_max_secs: 3600,
        ..Limits::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

impl PasswordChecks {
    /// `check` with a name and a password.
    async fn login(
        &self,
        from: &str,
        name: &str,
        password: &str,
    ) -> Result<Identity, LoginRefusal> {
        self.check(ip(from), Some(name), Some(password.as_bytes()))
            .await
    }

    /// How many hashes were checked.
    fn hashed(&self) -> u64 {
        self.inner.stats.checks.load(Ordering::Relaxed)
    }

    /// Lets spawned logins run until they wait, and says how many checks are admitted.
    async fn settle(&self) -> usize {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        self.inner.lock().pending
    }
}

fn spawn_login(checks: &Arc<PasswordChecks>, from: &'static str, password: &'static str) -> Login {
    spawn_login_as(checks, from.to_owned(), "pub", password.to_owned())
}

/// Checks with at most `max` waiting, where `pub` logged in from [`HOME`] (familiar there)
/// longer ago than a login is remembered.
async fn familiar_at_home(max: u32) -> Arc<PasswordChecks> {
    let checks = Arc::new(checks_with(Limits {
        max_password_checks: max,
        ..limits()
    }));
    checks
        .login(HOME, "pub", "secret")
        .await
        .expect("first login");
    checks.inner.lock().remembered = Bounded::new(10);
    checks
}

/// The address `pub` logs in from in [`familiar_at_home`].
const HOME: &str = "192.0.2.1";

/// `count` logins of strangers (distinct addresses and passwords) that will fail.
fn strangers(checks: &Arc<PasswordChecks>, count: usize) -> Vec<Login> {
    (0..count)
        .map(|n| spawn_login_as(checks, format!("198.51.100.{n}"), "nobody", format!("x{n}")))
        .collect()
}

/// A login's task.
type Login = tokio::task::JoinHandle<Result<Identity, LoginRefusal>>;

/// Frees one of the `held` cores, so that checks run one at a time, in the order they queued,
/// until `login` (which must succeed) is done; returns how many checks ran by then. The test
/// queues for a core itself, behind what is queued now, so the line stops there; then the
/// rest (`others`, which must fail) may go.
async fn one_core_until(
    checks: &Arc<PasswordChecks>,
    mut held: Vec<tokio::sync::OwnedSemaphorePermit>,
    login: Login,
    others: Vec<Login>,
) -> u64 {
    let stop = tokio::spawn(checks.inner.cores.clone().acquire_owned());
    checks.settle().await;
    held.pop();
    assert!(login.await.expect("task").is_ok());
    let ran = checks.hashed();
    drop(stop.await.expect("task"));
    drop(held);
    for other in others {
        assert!(other.await.expect("task").is_err());
    }
    ran
}

fn spawn_login_as(
    checks: &Arc<PasswordChecks>,
    from: String,
    name: &'static str,
    password: String,
) -> Login {
    let checks = checks.clone();
    tokio::spawn(async move { checks.login(&from, name, &password).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_one_user_connecting_at_once_costs_few_hash_checks() {
    let checks = Arc::new(checks_with(Limits::default()));
    let crowd: Vec<_> = (0..20)
        .map(|_| spawn_login(&checks, "192.0.2.1", "secret"))
        .collect();
    for client in crowd {
        let identity = client.await.expect("task").expect("right password");
        assert_eq!(identity.name(), "pub");
    }
    // At most one per permit ran before the first success was remembered.
    let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hashed = checks.hashed();
    assert!(
        (1..=permits as u64).contains(&hashed),
        "{hashed} hash checks for 20 clients with {permits} permits"
    );
}

#[tokio::test]
async fn right_password_is_remembered_and_wrong_one_never() {
    let checks = checks_with(Limits::default());
    let from = "192.0.2.1";
    assert!(checks.login(from, "pub", "wrong").await.is_err());
    assert_eq!(checks.inner.lock().remembered.len(), 0);
    let identity = checks.login(from, "pub", "secret").await.expect("ok");
    assert_eq!(identity.name(), "pub");
    assert_eq!(checks.inner.lock().remembered.len(), 1);
    // Remembered: the same pair again succeeds, another password still fails.
    assert!(checks.login(from, "pub", "secret").await.is_ok());
    assert!(checks.login(from, "pub", "secret2").await.is_err());
    assert_eq!(checks.hashed(), 3);
    let anonymous = checks.check(ip(from), None, None).await.expect("anonymous");
    assert!(anonymous.is_anonymous());
}

#[tokio::test]
async fn an_address_with_failures_is_backed_off_without_hashing() {
    let checks = checks_with(limits());
    let attacker = "192.0.2.66";
    for guess in ["a", "b", "c"] {
        let refused = checks.login(attacker, "pub", guess).await;
        assert_eq!(refused.err(), Some(LoginRefusal::BadCredentials), "{guess}");
    }
    assert_eq!(checks.hashed(), 3);
    // Backed off: further guesses, even the right password, are refused unchecked.
    for guess in ["d", "secret"] {
        let refused = checks.login(attacker, "pub", guess).await;
        assert_eq!(refused.err(), Some(LoginRefusal::BackingOff), "{guess}");
    }
    assert_eq!(checks.hashed(), 3);
    let stats = &checks.inner.stats;
    assert_eq!(stats.refused_backoff.load(Ordering::Relaxed), 2);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 3);
    assert_eq!(stats.tracked_addresses.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_users_backoff_spares_the_addresses_it_logged_in_from() {
    let checks = checks_with(limits());
    let (home, attacker, elsewhere) = ("192.0.2.1", "198.51.100.7", "203.0.113.9");
    checks
        .login(home, "pub", "secret")
        .await
        .expect("first login");
    // Five minutes later the login is no longer remembered...
    checks.inner.lock().remembered = Bounded::new(10);
    // ...while guesses from a botnet (an address each) back the user name off.
    for (n, guess) in ["a", "b", "c"].iter().enumerate() {
        let from = format!("198.51.100.{n}");
        assert!(checks.login(&from, "pub", guess).await.is_err());
    }
    let guess = checks.login(attacker, "pub", "d").await;
    assert_eq!(
        guess.err(),
        Some(LoginRefusal::BackingOff),
        "a fourth address"
    );
    let stranger = checks.login(elsewhere, "pub", "secret").await;
    assert_eq!(
        stranger.err(),
        Some(LoginRefusal::BackingOff),
        "an unfamiliar address"
    );
    let owner = checks.login(home, "pub", "secret").await;
    assert_eq!(owner.expect("the user's own address").name(), "pub");
    assert_eq!(checks.hashed(), 5);
}

#[tokio::test]
async fn beyond_the_queue_logins_are_refused_at_once() {
    let checks = Arc::new(checks_with(Limits {
        max_password_checks: 2,
        max_password_checks_per_address: 1,
        ..limits()
    }));
    let cores = checks.hold_cores();
    let first = spawn_login(&checks, "192.0.2.1", "secret");
    assert_eq!(checks.settle().await, 1);
    // One check per address: the same address again is refused, another one waits.
    let same = checks.login("192.0.2.1", "pub", "other").await;
    assert_eq!(same.err(), Some(LoginRefusal::Busy));
    let second = spawn_login(&checks, "192.0.2.2", "wrong");
    assert_eq!(checks.settle().await, 2);
    // The queue is full: refused at once, nothing checked.
    let third = checks.login("192.0.2.3", "pub", "secret3").await;
    assert_eq!(third.err(), Some(LoginRefusal::Busy));
    assert_eq!(checks.hashed(), 0);
    drop(cores);
    assert!(first.await.expect("task").is_ok());
    assert_eq!(
        second.await.expect("task").err(),
        Some(LoginRefusal::BadCredentials)
    );
    let stats = &checks.inner.stats;
    assert_eq!(stats.refused_busy.load(Ordering::Relaxed), 2);
    assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_login_without_failures_waits_behind_at_most_one_suspect_check() {
    let checks = Arc::new(checks_with(Limits {
        auth_failures_before_backoff: 10,
        ..limits()
    }));
    // Three addresses that failed once: suspect, not backed off.
    let suspects = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
    for from in suspects {
        assert!(checks.login(from, "nobody", "x").await.is_err());
    }
    let before = checks.hashed();
    let cores = checks.hold_cores();
    let queued: Vec<_> = suspects
        .iter()
        .zip(["y1", "y2", "y3"])
        .map(|(from, guess)| spawn_login(&checks, from, guess))
        .collect();
    assert_eq!(checks.settle().await, 3);
    let clean = spawn_login(&checks, "192.0.2.1", "secret");
    assert_eq!(checks.settle().await, 4);
    // One core at a time: the first suspect (through its gate before the clean login queued)
    // runs, then the clean login, and the two other suspects are still behind.
    let ran = one_core_until(&checks, cores, clean, queued).await;
    assert_eq!(ran - before, 2);
}

#[tokio::test]
async fn one_wrong_password_tried_by_a_crowd_costs_one_check_and_one_failure() {
    let checks = Arc::new(checks_with(limits()));
    let cores = checks.hold_cores();
    let crowd: Vec<_> = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
        .into_iter()
        .map(|from| spawn_login(&checks, from, "wrong"))
        .collect();
    assert_eq!(checks.settle().await, 1, "one check, three waiting for it");
    drop(cores);
    for login in crowd {
        let refused = login.await.expect("task");
        assert_eq!(refused.err(), Some(LoginRefusal::BadCredentials));
    }
    assert_eq!(checks.hashed(), 1);
    let stats = &checks.inner.stats;
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_login_given_up_while_waiting_gives_its_place_back() {
    let checks = Arc::new(checks_with(limits()));
    let cores = checks.hold_cores();
    let leader = spawn_login(&checks, "192.0.2.1", "wrong");
    assert_eq!(checks.settle().await, 1);
    let follower = spawn_login(&checks, "192.0.2.2", "wrong");
    checks.settle().await;
    // The handshake deadline passes: the connection's future is dropped.
    leader.abort();
    assert_eq!(checks.settle().await, 0);
    assert!(checks.inner.lock().checking.is_empty());
    assert_eq!(
        follower.await.expect("task").err(),
        Some(LoginRefusal::Busy)
    );
    drop(cores);
    assert_eq!(checks.hashed(), 0);
    assert_eq!(checks.inner.stats.pending.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_publisher_from_its_usual_address_passes_a_flood_of_strangers() {
    let checks = familiar_at_home(64).await;
    let before = checks.hashed();
    let cores = checks.inner.cores.available_permits();
    let held = checks.hold_cores();
    // Strangers, more than the clean gate lets queue for a core.
    let strangers = strangers(&checks, cores + 2);
    assert_eq!(checks.settle().await, cores + 2);
    let publisher = spawn_login(&checks, HOME, "secret");
    assert_eq!(checks.settle().await, cores + 3);
    // One core at a time: the strangers that passed the gate, then the publisher.
    let ran = one_core_until(&checks, held, publisher, strangers).await;
    assert_eq!(ran - before, cores as u64 + 1);
}

#[tokio::test]
async fn a_quarter_of_the_queue_is_kept_for_familiar_logins() {
    let checks = familiar_at_home(4).await;
    let held = checks.hold_cores();
    let strangers = strangers(&checks, 3);
    assert_eq!(checks.settle().await, 3);
    let stranger = checks.login("198.51.100.9", "nobody", "x").await;
    assert_eq!(
        stranger.err(),
        Some(LoginRefusal::Busy),
        "three quarters are taken"
    );
    let publisher = spawn_login(&checks, HOME, "secret");
    assert_eq!(checks.settle().await, 4, "the familiar login is admitted");
    drop(held);
    assert!(publisher.await.expect("task").is_ok());
    for stranger in strangers {
        assert!(stranger.await.expect("task").is_err());
    }
}

#[tokio::test]
async fn guesses_from_one_address_back_off_the_address_not_the_user_name() {
    let checks = checks_with(limits());
    for guess in ["a", "b", "c"] {
        assert!(checks.login("198.51.100.7", "pub", guess).await.is_err());
    }
    let again = checks.login("198.51.100.7", "pub", "d").await;
    assert_eq!(again.err(), Some(LoginRefusal::BackingOff), "the address");
    let owner = checks.login("192.0.2.1", "pub", "secret").await;
    assert_eq!(owner.expect("the user from a new address").name(), "pub");
    assert_eq!(
        checks.inner.lock().users.len(),
        1,
        "one address counted once"
    );
}
