//! Who may do what: the users file, argon2id password checks, per-user publish/subscribe ACLs.
//!
//! Depends on [`crate::topic`] only.
//!
//! The access model (DESIGN.md, "Access model"): anyone may connect without credentials and read
//! everything public, but never publish; publishers log in with a name and password from the
//! users file and may publish only to the topic filters listed for them. A user may also be
//! limited to reading some filters (`subscribe`), e.g. a bridge that has no business reading the
//! rest of the firehose.
//!
//! The users file (TOML), one table per user; `firehose passwd` prints the hash:
//! ```toml
//! [[user]]
//! name = "gerrit-bridge"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! publish = ["gerrit/#"]      # topic filters this user may publish to
//! subscribe = ["gerrit/#"]    # optional; without it the user may subscribe to anything
//! token = "$argon2id$v=19$m=19456,t=2,p=1$..."  # optional: hash of a bearer token (HTTP publish)
//! ```
//! A bearer token is presented as `<name>:<token>`: the name is the index that finds the one
//! hash to check ([`Users::authenticate_token`]).
//!
//! Bridges publish as internal identities ([`Identity::internal`]): a user that exists only
//! inside the process, with the ACL of its bridge configuration and no password.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde::Deserialize;
use toml::Spanned;

use crate::topic::{self, InvalidFilter, TopicTrie};

/// Why the users file cannot be used, or a password cannot be hashed. Every message names the
/// file, line and user concerned and says what is expected, so an operator can fix it unaided.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read at all.
    #[error("cannot read users file {}: {error}", path.display())]
    Read {
        /// The file named in the config or `--users`.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected shape (unknown or missing
    /// field, wrong type).
    #[error("{at}: {message}")]
    Syntax {
        /// Where the problem is.
        at: Location,
        /// What the TOML parser expected and found.
        message: String,
    },
    /// A `name` is the empty string.
    #[error("{at}: user name must not be empty")]
    EmptyName {
        /// Where the name is.
        at: Location,
    },
    /// A `name` is reserved for clients that do not log in.
    #[error("{at}: user name \"{name}\" is reserved for clients that do not log in; pick another")]
    ReservedName {
        /// Where the name is.
        at: Location,
        /// The name.
        name: String,
    },
    /// Two users have the same `name`.
    #[error(
        "{at}: user \"{name}\" is defined twice (first on line {first_line}); names must be unique"
    )]
    DuplicateName {
        /// Where the second definition is.
        at: Location,
        /// The name.
        name: String,
        /// Line of the first definition.
        first_line: usize,
    },
    /// A `password` is not an argon2 hash in PHC format.
    #[error(
        "{at}: user \"{user}\": password must be an argon2 hash such as \
         \"$argon2id$v=19$m=19456,t=2,p=1$...\" as printed by `firehose passwd` \
         (never the password itself), but {reason}"
    )]
    BadHash {
        /// Where the password is.
        at: Location,
        /// The user it belongs to.
        user: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `publish` or `subscribe` entry is not a valid MQTT topic filter.
    #[error("{at}: user \"{user}\": {field} filter \"{filter}\" is invalid: {reason}")]
    BadFilter {
        /// Where the filter is.
        at: Location,
        /// The user it belongs to.
        user: String,
        /// `publish` or `subscribe`.
        field: &'static str,
        /// The filter as written.
        filter: String,
        /// The rule it breaks.
        reason: InvalidFilter,
    },
    /// Hashing a new password failed (the system's random generator failed, or the password is
    /// longer than argon2 accepts).
    #[error("cannot hash the password: {reason}")]
    Hash {
        /// What argon2 said.
        reason: String,
    },
}

/// Where in the users file a problem is, shown as `users file <path>, line <n>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The file; `None` when the text came from [`Users::parse`].
    pub path: Option<PathBuf>,
    /// 1-based line; `None` when the parser could not tell.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("users file")?;
        if let Some(path) = &self.path {
            write!(f, " {}", path.display())?;
        }
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        Ok(())
    }
}

impl AuthError {
    /// Adds the file name to an error found while parsing its text.
    fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            AuthError::Syntax { at, .. }
            | AuthError::EmptyName { at }
            | AuthError::ReservedName { at, .. }
            | AuthError::DuplicateName { at, .. }
            | AuthError::BadHash { at, .. }
            | AuthError::BadFilter { at, .. } => at.path = Some(path.to_owned()),
            AuthError::Read { .. } | AuthError::Hash { .. } => {}
        }
        self
    }
}

/// Why a client may not log in. Deliberately says nothing about which part was wrong, so that a
/// client cannot probe for user names; the broker answers CONNACK 4 (v3.1.1) or 0x86 (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Unknown user, wrong password, or a password without a user name.
    #[error("bad user name or password")]
    BadCredentials,
}

/// The name [`Identity::Anonymous`] goes by in logs and events.
const ANONYMOUS: &str = "anonymous";

/// The users file as it is written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    /// One `[[user]]` table per user.
    #[serde(default)]
    user: Vec<UserEntry>,
}

/// One `[[user]]` table as it is written; spans give line numbers for errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    /// The MQTT user name.
    name: Spanned<String>,
    /// The PHC argon2 hash.
    password: Spanned<String>,
    /// Filters the user may publish to.
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    /// Filters the user may subscribe to; absent means everything.
    subscribe: Option<Vec<Spanned<String>>>,
    /// The PHC argon2 hash of a bearer token for the HTTP publish API; absent means none.
    token: Option<Spanned<String>>,
}

/// A list of topic filters granted to a user, kept both as written (for the subset check on
/// SUBSCRIBE) and as a trie (for the per-message match on PUBLISH and delivery).
struct Acl {
    /// The filters as written in the users file.
    filters: Vec<String>,
    /// The same filters, for matching a topic name in one walk.
    trie: TopicTrie<()>,
}

impl Acl {
    /// Validates `filters`, naming `user` and `field` in errors.
    fn parse(
        filters: Vec<Spanned<String>>,
        user: &str,
        field: &'static str,
        text: &str,
    ) -> Result<Acl, AuthError> {
        let mut trie = TopicTrie::new();
        let mut list = Vec::with_capacity(filters.len());
        for filter in filters {
            let at = location(text, filter.span().start);
            let filter = filter.into_inner();
            if let Err(reason) = topic::check_filter(&filter) {
                return Err(AuthError::BadFilter {
                    at,
                    user: user.to_owned(),
                    field,
                    filter,
                    reason,
                });
            }
            trie.insert(&filter, ());
            list.push(filter);
        }
        Ok(Acl {
            filters: list,
            trie,
        })
    }
}

/// A user of the users file: a name, a password hash and what they may publish and read.
pub struct User {
    /// The MQTT user name; shared, because every event the user publishes records it.
    name: Arc<str>,
    /// The parsed PHC hash, checked when the file was loaded; `None` for an internal identity
    /// (a bridge), which nobody can log in as.
    hash: Option<PasswordHash>,
    /// The parsed PHC hash of the user's bearer token, if it has one.
    token: Option<PasswordHash>,
    /// Filters the user may publish to.
    publish: Acl,
    /// Filters the user may subscribe to; `None` means everything.
    subscribe: Option<Acl>,
}

impl User {
    /// The user name, for logs and for the `publisher` field of events.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The filters this user may publish to, as written in the users file.
    pub fn publish_filters(&self) -> &[String] {
        &self.publish.filters
    }

    /// The filters this user may subscribe to, as written; `None` when unrestricted.
    pub fn subscribe_filters(&self) -> Option<&[String]> {
        self.subscribe.as_ref().map(|acl| acl.filters.as_slice())
    }
}

impl fmt::Debug for User {
    /// Leaves the password hash out: it has no place in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("publish", &self.publish.filters)
            .field("subscribe", &self.subscribe_filters())
            .finish_non_exhaustive()
    }
}

/// Who a connected client is, decided once at CONNECT and consulted on every PUBLISH and
/// SUBSCRIBE. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub enum Identity {
    /// Connected without credentials: may read everything public, never publish.
    Anonymous,
    /// Logged in as a user of the users file.
    User(Arc<User>),
}

impl Identity {
    /// `"anonymous"` or the user name, for logs and the `publisher` field of events.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => ANONYMOUS,
            Identity::User(user) => &user.name,
        }
    }

    /// The name as [`Identity::name`], shared: every event a publisher appends records it, and
    /// a copy per event was an allocation per event.
    pub fn shared_name(&self) -> Arc<str> {
        match self {
            Identity::Anonymous => ANONYMOUS.into(),
            Identity::User(user) => user.name.clone(),
        }
    }

    /// An internal publisher (a bridge): named `name`, allowed to publish to `publish`, to
    /// subscribe to nothing, and unknown to the users file, so that nobody can log in as it.
    ///
    /// # Errors
    /// The first filter that is not a valid MQTT topic filter, with the rule it breaks.
    pub fn internal(name: &str, publish: &[String]) -> Result<Identity, (String, InvalidFilter)> {
        let mut trie = TopicTrie::new();
        for filter in publish {
            topic::check_filter(filter).map_err(|reason| (filter.clone(), reason))?;
            trie.insert(filter, ());
        }
        Ok(Identity::User(Arc::new(User {
            name: name.into(),
            hash: None,
            token: None,
            publish: Acl {
                filters: publish.to_vec(),
                trie,
            },
            subscribe: Some(Acl {
                filters: Vec::new(),
                trie: TopicTrie::new(),
            }),
        })))
    }

    /// Whether the client connected without credentials.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Identity::Anonymous)
    }

    /// Whether this client may publish to the topic name `topic` (also decides whether its will
    /// message may be published). Anonymous clients never may.
    ///
    /// `topic` is expected to be a valid topic name (no wildcards); the broker checks that first.
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Identity::Anonymous => false,
            Identity::User(user) => user.publish.trie.any_match(topic),
        }
    }

    /// Whether this client may subscribe to `filter`: true unless the user has a `subscribe`
    /// list, in which case the filter must lie within one of its entries (`gerrit/+/x` within
    /// `gerrit/#`, but not `#`). A shared subscription `$share/<group>/<f>` is judged by `<f>`;
    /// a `$share/` filter with no `<f>` is refused.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((_group, filter)) => filter,
                None => return false,
            },
            None => filter,
        };
        match self {
            Identity::User(user) => match &user.subscribe {
                Some(acl) => acl
                    .filters
                    .iter()
                    .any(|outer| topic::is_subset(filter, outer)),
                None => true,
            },
            Identity::Anonymous => true,
        }
    }

    /// Whether a message on the topic name `topic` may be delivered to this client. Needed on top
    /// of [`Identity::may_subscribe`] because a subscription accepted as within the ACL never
    /// matches more than it; this is the cheap per-message guard for deliveries that reach the
    /// client by other paths (session catch-up from the log, retained messages).
    pub fn may_receive(&self, topic: &str) -> bool {
        match self {
            Identity::User(user) => match &user.subscribe {
                Some(acl) => acl.trie.any_match(topic),
                None => true,
            },
            Identity::Anonymous => true,
        }
    }
}

/// The users of the users file, by name. Cheap to clone and share between connections (an
/// `Arc` inside); replace the whole value to reload the file.
#[derive(Clone, Default)]
pub struct Users {
    /// Users by name.
    by_name: Arc<HashMap<String, Arc<User>>>,
    /// The user with a bearer token when exactly one has one: a token that names no user is
    /// checked against it (tokens made before they named their user).
    sole_token_holder: Option<Arc<User>>,
}

impl fmt::Debug for Users {
    /// Lists the user names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    /// No users: what the broker runs with when no users file is configured, so that everyone
    /// is anonymous and nobody may publish over MQTT.
    pub fn none() -> Users {
        Users::default()
    }

    /// Reads and validates the users file at `path`.
    ///
    /// # Errors
    /// [`AuthError::Read`] if the file cannot be read, otherwise the first problem in it, with
    /// the path and line (see [`Users::parse`]).
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|error| AuthError::Read {
            path: path.to_owned(),
            error,
        })?;
        Users::parse(&text).map_err(|error| error.in_file(path))
    }

    /// Parses and validates the text of a users file.
    ///
    /// # Errors
    /// The first problem found: TOML syntax, unknown or missing field ([`AuthError::Syntax`]),
    /// empty, reserved or duplicate name, password that is not an argon2 hash, invalid topic
    /// filter.
    pub fn parse(text: &str) -> Result<Users, AuthError> {
        let file: UsersFile = toml::from_str(text).map_err(|error| AuthError::Syntax {
            at: Location {
                path: None,
                line: error.span().map(|span| line_of(text, span.start)),
            },
            // One line: the parser puts its "expected ..." hint on a line of its own.
            message: error.message().trim_end().replace('\n', ": "),
        })?;
        let mut by_name: HashMap<String, Arc<User>> = HashMap::with_capacity(file.user.len());
        let mut first_lines: HashMap<String, usize> = HashMap::with_capacity(file.user.len());
        for entry in file.user {
            let name_line = line_of(text, entry.name.span().start);
            let at = Location {
                path: None,
                line: Some(name_line),
            };
            let name = entry.name.into_inner();
            if name.is_empty() {
                return Err(AuthError::EmptyName { at });
            }
            if name == ANONYMOUS {
                return Err(AuthError::ReservedName { at, name });
            }
            if let Some(&first_line) = first_lines.get(&name) {
                return Err(AuthError::DuplicateName {
                    at,
                    name,
                    first_line,
                });
            }
            let hash =
                parse_hash(entry.password.get_ref()).map_err(|reason| AuthError::BadHash {
                    at: location(text, entry.password.span().start),
                    user: name.clone(),
                    reason,
                })?;
            let token = match &entry.token {
                Some(token) => {
                    Some(
                        parse_hash(token.get_ref()).map_err(|reason| AuthError::BadHash {
                            at: location(text, token.span().start),
                            user: name.clone(),
                            reason: format!("(in `token`) {reason}"),
                        })?,
                    )
                }
                None => None,
            };
            let publish = Acl::parse(entry.publish, &name, "publish", text)?;
            let subscribe = match entry.subscribe {
                Some(filters) => Some(Acl::parse(filters, &name, "subscribe", text)?),
                None => None,
            };
            first_lines.insert(name.clone(), name_line);
            by_name.insert(
                name.clone(),
                Arc::new(User {
                    name: name.into(),
                    hash: Some(hash),
                    token,
                    publish,
                    subscribe,
                }),
            );
        }
        let mut holders = by_name.values().filter(|user| user.token.is_some());
        let sole_token_holder = match (holders.next(), holders.next()) {
            (Some(user), None) => Some(Arc::clone(user)),
            _ => None,
        };
        Ok(Users {
            by_name: Arc::new(by_name),
            sole_token_holder,
        })
    }

    /// Whether there are no users, i.e. nobody can log in.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The identity of a user known by other means than a password (a TLS client certificate
    /// mapped to a user name by the transport), `None` if the file has no such user.
    pub fn identity_of(&self, name: &str) -> Option<Identity> {
        self.by_name.get(name).cloned().map(Identity::User)
    }

    /// Decides who a connecting client is from the CONNECT user name and password.
    ///
    /// No user name and no password gives [`Identity::Anonymous`]. A user name must be in the
    /// file and the password must verify against its hash. An unknown user costs the same
    /// argon2 work as a known one, so response times do not reveal which names exist.
    ///
    /// CPU-heavy by design (argon2id with 19 MiB and two passes, some tens of milliseconds):
    /// callers on an async runtime must run it on a blocking thread
    /// (`tokio::task::spawn_blocking`), with `Users` cloned into the closure.
    ///
    /// # Errors
    /// [`AuthFailure::BadCredentials`] for an unknown user, a wrong or missing password, or a
    /// password without a user name.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, AuthFailure> {
        let (name, password) = match (username, password) {
            (None, None) => return Ok(Identity::Anonymous),
            (Some(name), Some(password)) => (name, password),
            (None, Some(_)) | (Some(_), None) => return Err(AuthFailure::BadCredentials),
        };
        match self.by_name.get(name) {
            Some(user)
                if user
                    .hash
                    .as_ref()
                    .is_some_and(|hash| verify(password, hash)) =>
            {
                Ok(Identity::User(Arc::clone(user)))
            }
            Some(_) => Err(AuthFailure::BadCredentials),
            None => {
                // Spend the same time as for a real user.
                if let Some(dummy) = dummy_hash() {
                    verify(password, dummy);
                }
                Err(AuthFailure::BadCredentials)
            }
        }
    }

    /// Decides who presents the bearer token `presented` (HTTP publish), with one argon2 check
    /// whatever the users file holds: argon2 salts are per hash, so a token cannot be looked up
    /// among the hashes, and trying it against every user's let anyone cost the server one
    /// hash per user per request.
    ///
    /// - `<user>:<token>`, the form to use: the token carries the name of its user, the index,
    ///   and is checked against that user's `token` hash.
    /// - A token that names no user with a token (tokens handed out before they named their
    ///   user): checked against the one user that has a token, when exactly one has. With
    ///   several, a bare token cannot say whose it is and is refused; the check still runs
    ///   against a dummy hash, so that the answer takes as long.
    ///
    /// CPU-heavy like [`Users::authenticate`]: run it on a blocking thread and cache successes.
    ///
    /// # Errors
    /// [`AuthFailure::BadCredentials`] when the token does not verify.
    pub fn authenticate_token(&self, presented: &[u8]) -> Result<Identity, AuthFailure> {
        let named = presented.iter().position(|&b| b == b':').and_then(|at| {
            let name = std::str::from_utf8(&presented[..at]).ok()?;
            let user = self.by_name.get(name).filter(|user| user.token.is_some())?;
            Some((user, &presented[at + 1..]))
        });
        let (holder, secret) = match named {
            Some((user, secret)) => (Some(user), secret),
            None => (self.sole_token_holder.as_ref(), presented),
        };
        match holder.and_then(|user| user.token.as_ref().map(|hash| (user, hash))) {
            Some((user, hash)) if verify(secret, hash) => Ok(Identity::User(Arc::clone(user))),
            Some(_) => Err(AuthFailure::BadCredentials),
            None => {
                // Spend the same time as for a real check.
                if let Some(dummy) = dummy_hash() {
                    verify(secret, dummy);
                }
                Err(AuthFailure::BadCredentials)
            }
        }
    }
}

/// Hashes `password` for the users file: argon2id with the argon2 crate's default parameters
/// (m=19456 KiB, t=2, p=1, the OWASP recommendation) and a random 16-byte salt from the
/// operating system, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// # Errors
/// [`AuthError::Hash`] if the system's random generator fails or argon2 rejects the password
/// (longer than 4 GiB).
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|error| AuthError::Hash {
            reason: error.to_string(),
        })
}

/// Parses a PHC string and checks that argon2 can verify against it, so that a bad hash is
/// reported when the file is loaded rather than as failed logins later.
fn parse_hash(text: &str) -> Result<PasswordHash, String> {
    let hash = PasswordHash::new(text).map_err(|error| format!("it does not parse ({error})"))?;
    let algorithm = hash.algorithm.as_str();
    if argon2::Algorithm::try_from(algorithm).is_err() {
        return Err(format!("its algorithm is \"{algorithm}\""));
    }
    if let Some(version) = hash.version {
        if argon2::Version::try_from(version).is_err() {
            return Err(format!(
                "its version v={version} is not one argon2 knows (16 or 19)"
            ));
        }
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("it lacks the salt or the hash part".to_owned());
    }
    if let Err(error) = argon2::Params::try_from(&hash) {
        return Err(format!("its parameters are invalid ({error})"));
    }
    Ok(hash)
}

/// Whether `password` matches `hash`.
fn verify(password: &[u8], hash: &PasswordHash) -> bool {
    #[cfg(test)]
    tests::HASHES_CHECKED.with(|n| n.set(n.get() + 1));
    Argon2::default().verify_password(password, hash).is_ok()
}

/// A hash of a password nobody knows, verified against when the user name is unknown, so that
/// unknown and known names take the same time. Same parameters as [`hash_password`].
fn dummy_hash() -> Option<&'static PasswordHash> {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$\
                         0Y/Z516Y156GhSUrdxloQQ$XzF588vnwD9BPhOOHUIlGmFu1n6liTmx/zIeYSoJj8c";
    static PARSED: OnceLock<Option<PasswordHash>> = OnceLock::new();
    PARSED
        .get_or_init(|| PasswordHash::new(DUMMY).ok())
        .as_ref()
}

/// 1-based line of the byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// A [`Location`] without a path for the byte offset `offset` in `text`.
fn location(text: &str, offset: usize) -> Location {
    Location {
        path: None,
        line: Some(line_of(text, offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Argon2 checks made by this thread: how the tests see what a request costs.
        pub(super) static HASHES_CHECKED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// The argon2 checks `f` makes (on this thread).
    fn hashes_checked<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = HASHES_CHECKED.with(std::cell::Cell::get);
        let out = f();
        (out, HASHES_CHECKED.with(std::cell::Cell::get) - before)
    }

    /// Hashing is slow on purpose: hash the test passwords once for all tests.
    fn hashes() -> &'static (String, String) {
        static HASHES: OnceLock<(String, String)> = OnceLock::new();
        HASHES.get_or_init(|| {
            (
                hash_password(b"s3cret").expect("hash"),
                hash_password(b"other pass").expect("hash"),
            )
        })
    }

    fn sample() -> String {
        let (gerrit, reader) = hashes();
        format!(
            r#"
[[user]]
name = "gerrit-bridge"
password = "{gerrit}"
publish = ["gerrit/#"]

[[user]]
name = "reader"
password = "{reader}"
publish = ["private/reader/+"]
subscribe = ["private/#", "gerrit/+/comment-added", "$SYS/broker/#"]
"#
        )
    }

    fn users() -> Users {
        Users::parse(&sample()).expect("sample users file parses")
    }

    fn login(users: &Users, name: &str, password: &str) -> Identity {
        users
            .authenticate(Some(name), Some(password.as_bytes()))
            .expect("login succeeds")
    }

    #[test]
    fn hash_has_default_parameters_and_verifies() {
        let (hash, _) = hashes();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let parsed = parse_hash(hash).expect("own hash parses");
        assert!(verify(b"s3cret", &parsed));
        assert!(!verify(b"s3cret ", &parsed));
        // Random salt: the same password never gives the same hash.
        assert_ne!(hash_password(b"s3cret").expect("hash"), *hash);
    }

    #[test]
    fn dummy_hash_parses() {
        let dummy = dummy_hash().expect("the dummy hash is a valid PHC string");
        assert!(parse_hash(&dummy.to_string()).is_ok());
    }

    #[test]
    fn parses_good_file() {
        let users = users();
        assert_eq!(users.len(), 2);
        assert!(!users.is_empty());
        assert!(Users::none().is_empty());
        assert!(Users::parse("").expect("empty file").is_empty());
        let Identity::User(reader) = login(&users, "reader", "other pass") else {
            panic!("reader logs in as a user")
        };
        assert_eq!(reader.name(), "reader");
        assert_eq!(reader.publish_filters(), ["private/reader/+"]);
        assert_eq!(reader.subscribe_filters().map(<[String]>::len), Some(3));
        assert!(
            !format!("{reader:?}").contains("argon2"),
            "Debug hides the hash"
        );
    }

    #[test]
    fn authenticate() {
        let users = users();
        let anonymous = users.authenticate(None, None).expect("anonymous");
        assert!(anonymous.is_anonymous());
        assert_eq!(anonymous.name(), "anonymous");
        assert_eq!(
            login(&users, "gerrit-bridge", "s3cret").name(),
            "gerrit-bridge"
        );
        let bad = Err(AuthFailure::BadCredentials);
        let check = |name: Option<&str>, password: Option<&str>| {
            users
                .authenticate(name, password.map(str::as_bytes))
                .map(|id| id.name().to_owned())
        };
        assert_eq!(check(Some("gerrit-bridge"), Some("wrong")), bad);
        assert_eq!(check(Some("gerrit-bridge"), Some("")), bad);
        assert_eq!(check(Some("gerrit-bridge"), None), bad);
        assert_eq!(
            check(Some("reader"), Some("s3cret")),
            bad,
            "another user's password"
        );
        assert_eq!(check(Some("nobody"), Some("s3cret")), bad);
        assert_eq!(check(Some(""), Some("s3cret")), bad);
        assert_eq!(check(None, Some("s3cret")), bad);
        assert_eq!(
            Users::none()
                .authenticate(Some("gerrit-bridge"), Some(b"s3cret"))
                .map(|_| ()),
            Err(AuthFailure::BadCredentials)
        );
    }

    #[test]
    fn publish_acl() {
        let users = users();
        let gerrit = login(&users, "gerrit-bridge", "s3cret");
        assert!(gerrit.may_publish("gerrit/openstack/nova/comment-added"));
        assert!(gerrit.may_publish("gerrit"));
        assert!(!gerrit.may_publish("launchpad/nova/x/1"));
        assert!(!gerrit.may_publish("gerrit2/x"));
        let reader = login(&users, "reader", "other pass");
        assert!(reader.may_publish("private/reader/x"));
        assert!(!reader.may_publish("private/reader/x/y"));
        assert!(!reader.may_publish("private/other/x"));
        assert!(!Identity::Anonymous.may_publish("gerrit/x"));
        assert!(!Identity::Anonymous.may_publish("anything"));
    }

    #[test]
    fn subscribe_acl() {
        let users = users();
        let anonymous = Identity::Anonymous;
        let gerrit = login(&users, "gerrit-bridge", "s3cret");
        for identity in [&anonymous, &gerrit] {
            for filter in ["#", "gerrit/#", "$SYS/#", "a/+/b", "$share/g/#"] {
                assert!(
                    identity.may_subscribe(filter),
                    "{} {filter}",
                    identity.name()
                );
            }
            assert!(identity.may_receive("private/x"));
            assert!(!identity.may_subscribe("$share/no-filter"));
        }
        let reader = login(&users, "reader", "other pass");
        for filter in [
            "private/#",
            "private/+/x",
            "private",
            "gerrit/+/comment-added",
            "gerrit/nova/comment-added",
            "$SYS/broker/clients/connected",
            "$share/readers/private/#",
            "$share/readers/gerrit/x/comment-added",
        ] {
            assert!(
                reader.may_subscribe(filter),
                "reader may subscribe to {filter}"
            );
        }
        for filter in [
            "#",
            "+/#",
            "+/+/comment-added",
            "gerrit/#",
            "gerrit/+/+",
            "gerrit/nova/comment-added/x",
            "$SYS/#",
            "$share/readers/#",
            "$share/private/x",
            "$share/readers",
        ] {
            assert!(
                !reader.may_subscribe(filter),
                "reader may not subscribe to {filter}"
            );
        }
        assert!(reader.may_receive("private/a/b"));
        assert!(reader.may_receive("gerrit/nova/comment-added"));
        assert!(reader.may_receive("$SYS/broker/uptime"));
        assert!(!reader.may_receive("gerrit/nova/patchset-created"));
        assert!(!reader.may_receive("$SYS/other"));
    }

    /// Parses `text` and returns the error message.
    fn error(text: &str) -> String {
        match Users::parse(text) {
            Ok(users) => panic!("expected an error, parsed {users:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn rejects_bad_files() {
        let (hash, _) = hashes();
        let user = |name: &str, extra: &str| {
            format!("[[user]]\nname = \"{name}\"\npassword = \"{hash}\"\n{extra}\n")
        };

        let twice = user("a", "") + &user("b", "") + &user("a", "");
        assert_eq!(
            error(&twice),
            "users file, line 10: user \"a\" is defined twice (first on line 2); \
             names must be unique"
        );

        assert_eq!(
            error(&user("", "")),
            "users file, line 2: user name must not be empty"
        );
        assert!(error(&user("anonymous", "")).contains("reserved"));

        let message = error(&user("a", "pasword = \"x\""));
        assert!(
            message.starts_with("users file, line 4: unknown field `pasword`"),
            "{message}"
        );
        let message = error("[[user]]\nname = \"a\"\n");
        assert!(message.contains("missing field `password`"), "{message}");
        let message = error("[[users]]\nname = \"a\"\n");
        assert!(message.contains("unknown field `users`"), "{message}");
        let message = error(&user("a", "publish = \"gerrit/#\""));
        assert!(message.starts_with("users file, line 4:"), "{message}");
        let message = error("[[user]\n");
        assert!(message.starts_with("users file, line 1:"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        let message = error(&user("a", "publish = [\"ok/#\", \"gerrit/#/x\"]"));
        assert_eq!(
            message,
            "users file, line 4: user \"a\": publish filter \"gerrit/#/x\" is invalid: \
             `#` must be the whole last level (as in `a/#`)"
        );
        let message = error(&user("a", "subscribe = [\"\"]"));
        assert!(
            message.contains("subscribe filter \"\" is invalid"),
            "{message}"
        );
    }

    #[test]
    fn rejects_bad_hashes() {
        let (hash, _) = hashes();
        let bad = [
            ("s3cret", "it does not parse"),
            ("", "it does not parse"),
            (
                "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "its algorithm is \"pbkdf2-sha256\"",
            ),
            (
                "$argon2id$v=19$m=19456,t=2,p=1",
                "it lacks the salt or the hash part",
            ),
            (
                "$argon2id$v=7$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "version v=7",
            ),
            (
                "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
                "parameters are invalid",
            ),
        ];
        for (password, reason) in bad {
            let text = format!("\n[[user]]\nname = \"a\"\npassword = \"{password}\"\n");
            let message = error(&text);
            assert!(message.starts_with("users file, line 4: user \"a\": password must be"));
            assert!(message.contains(reason), "{password:?}: {message}");
        }
        // A hash with a different algorithm variant still verifies.
        let argon2i = hash.replacen("argon2id", "argon2i", 1);
        assert!(Users::parse(&format!(
            "[[user]]\nname = \"a\"\npassword = \"{argon2i}\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let missing = Users::load(&path).expect_err("no such file").to_string();
        assert!(missing.starts_with("cannot read users file "), "{missing}");
        assert!(missing.contains("users.toml"), "{missing}");

        std::fs::write(&path, sample()).expect("write");
        assert_eq!(Users::load(&path).expect("loads").len(), 2);

        std::fs::write(&path, "\n[[user]]\nname = \"\"\n password = \"x\"").expect("write");
        let message = Users::load(&path).expect_err("bad file").to_string();
        assert_eq!(
            message,
            format!(
                "users file {}, line 3: user name must not be empty",
                path.display()
            )
        );
    }

    #[test]
    fn tokens_and_internal_identities() {
        let (gerrit, token) = hashes();
        let text = format!(
            "[[user]]\nname = \"ci\"\npassword = \"{gerrit}\"\ntoken = \"{token}\"\n\
             publish = [\"ci/#\"]\n[[user]]\nname = \"other\"\npassword = \"{gerrit}\"\n"
        );
        let users = Users::parse(&text).expect("parses");
        let ci = users
            .authenticate_token(b"other pass")
            .expect("token verifies");
        assert_eq!(ci.name(), "ci");
        assert!(ci.may_publish("ci/x"));
        assert_eq!(
            users.authenticate_token(b"s3cret").map(|_| ()),
            Err(AuthFailure::BadCredentials),
            "a password is not a token"
        );
        assert_eq!(
            Users::none().authenticate_token(b"x").map(|_| ()),
            Err(AuthFailure::BadCredentials)
        );
        let bad = format!("[[user]]\nname = \"a\"\npassword = \"{gerrit}\"\ntoken = \"plain\"\n");
        let message = error(&bad);
        assert!(
            message.starts_with("users file, line 4: user \"a\""),
            "{message}"
        );
        assert!(message.contains("(in `token`)"), "{message}");

        let bridge =
            Identity::internal("bridge:review", &["gerrit/#".to_owned()]).expect("valid filters");
        assert_eq!(bridge.name(), "bridge:review");
        assert!(bridge.may_publish("gerrit/nova/comment-added"));
        assert!(!bridge.may_publish("webhooks/x"));
        assert!(!bridge.may_subscribe("#"));
        let Identity::User(user) = &bridge else {
            panic!("internal identities are users")
        };
        assert!(users.identity_of(user.name()).is_none());
        assert!(Identity::internal("x", &["a/#/b".to_owned()]).is_err());
    }

    #[test]
    fn a_bearer_token_costs_one_hash_whoever_has_tokens() {
        let (password, token) = hashes();
        let holder = |name: &str| {
            format!(
                "[[user]]\nname = \"{name}\"\npassword = \"{password}\"\ntoken = \"{token}\"\n\
                 publish = [\"{name}/#\"]\n"
            )
        };
        let text: String = (0..8).map(|i| holder(&format!("ci{i}"))).collect();
        let users = Users::parse(&text).expect("parses");
        // Named: one hash, the user's.
        let (who, hashes) = hashes_checked(|| users.authenticate_token(b"ci5:other pass"));
        assert_eq!(who.expect("verifies").name(), "ci5");
        assert_eq!(hashes, 1);
        for wrong in [
            &b"ci5:wrong"[..],
            b"ci5:",
            b"nobody:other pass",
            b"other pass",
            b"garbage",
            b"",
        ] {
            let (who, hashes) = hashes_checked(|| users.authenticate_token(wrong));
            assert_eq!(
                who.map(|_| ()),
                Err(AuthFailure::BadCredentials),
                "{wrong:?}"
            );
            assert_eq!(hashes, 1, "{wrong:?}: one hash, not one per token holder");
        }
        // One holder: a bare token (made before tokens named their user) still works.
        let users = Users::parse(&holder("solo")).expect("parses");
        assert_eq!(
            users
                .authenticate_token(b"other pass")
                .expect("bare token of the only holder")
                .name(),
            "solo"
        );
        assert_eq!(
            users
                .authenticate_token(b"solo:other pass")
                .expect("named")
                .name(),
            "solo"
        );
    }

    #[test]
    fn users_are_cheap_to_share() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Users>();
        assert_send_sync::<Identity>();
    }
}
