//! The topic trie: MQTT topic filters (`+`, `#`) indexed so that finding every filter that
//! matches a topic name costs one walk down the levels of that name.
//!
//! A leaf module (depends on nothing in this crate): the broker routes with it and `auth` checks
//! ACLs with it.
//!
//! # Matching rules (MQTT 5.0 §4.7, the same in 3.1.1 §4.7)
//! - Levels are separated by `/`; empty levels are levels (`a//b` has three, `/a` has two).
//! - `+` matches exactly one level, including an empty one.
//! - `#` as the last level matches any number of levels, including none: `a/#` matches `a`.
//! - A topic whose first level starts with `$` (`$SYS/...`) is not matched by a filter whose first
//!   level is `+` or `#`, so `#` never leaks broker internals.
//!
//! Filters are expected to be valid (see [`check_filter`]; the broker checks them with the codec).
//! An invalid one is stored and matched consistently rather than rejected: a `#` that is not the
//! last level, and levels that merely contain `+` or `#` (`a+`), are plain text.

mod names;

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;

pub use names::TopicNames;

/// A map from topic filter to `T`, searchable by topic name.
///
/// Why a trie: a broker holds many filters and must find all that match each published topic;
/// walking the topic's levels down the trie costs the same whether there are ten filters or a
/// million, and the walk allocates nothing.
pub struct TopicTrie<T> {
    /// The level before the first: its children are the first levels of every filter.
    root: Node<T>,
    /// Number of stored values, kept so that [`TopicTrie::len`] does not walk the trie.
    len: usize,
}

/// The literal next levels of a node, by their text.
///
/// Hashed with std's SipHash, not a faster hash such as foldhash (about 1.5 % of the broker's
/// CPU in a fan-in flood): clients choose filters, and foldhash does not claim to resist an
/// attacker who can observe it and then craft colliding levels.
type Children<T> = HashMap<Box<str>, Node<T>>;

/// One level of a filter. The two wildcards get their own slots so that a match never has to
/// scan the literal children.
struct Node<T> {
    /// The value of the filter that ends at this level.
    value: Option<Leaf<T>>,
    /// Literal next levels, by their text; `None` while there are none. Boxed: most nodes are
    /// the last level of a filter, and an empty map would be 48 bytes in each of them (a
    /// broker with a topic per client holds one such node per client).
    #[allow(clippy::box_collection)]
    children: Option<Box<Children<T>>>,
    /// The `+` next level.
    plus: Option<Box<Node<T>>>,
    /// The value of the filter that continues with a final `#`; `#` is always last, so it is a
    /// leaf and not a node.
    hash: Option<Box<Leaf<T>>>,
}

/// A stored value with its filter, which [`TopicTrie::for_each_match`] hands back to the caller
/// (the router needs to know which subscription matched).
struct Leaf<T> {
    /// The filter exactly as inserted.
    filter: Box<str>,
    /// The caller's value.
    value: T,
}

/// One step of a filter walked down the trie.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step<'f> {
    /// A level that matches only itself.
    Literal(&'f str),
    /// `+`
    Plus,
    /// `#` as the last level.
    Hash,
}

/// Splits a filter into [`Step`]s, recognising `#` only as the last level.
fn steps(filter: &str) -> impl Iterator<Item = Step<'_>> {
    let mut levels = filter.split('/').peekable();
    std::iter::from_fn(move || {
        let level = levels.next()?;
        Some(match level {
            "+" => Step::Plus,
            "#" if levels.peek().is_none() => Step::Hash,
            _ => Step::Literal(level),
        })
    })
}

impl<T> Node<T> {
    /// Whether nothing is stored at or below this node, so that its parent may drop it.
    fn is_empty(&self) -> bool {
        self.value.is_none()
            && self.hash.is_none()
            && self.plus.is_none()
            && self.children.as_ref().is_none_or(|c| c.is_empty())
    }

    /// Number of child nodes (not counting the `#` leaf).
    fn child_count(&self) -> usize {
        self.children.as_ref().map_or(0, |c| c.len()) + usize::from(self.plus.is_some())
    }

    /// The child for `step`, if any (`Hash` has no node).
    fn child(&self, step: Step<'_>) -> Option<&Node<T>> {
        match step {
            Step::Literal(level) => self.children.as_ref()?.get(level),
            Step::Plus => self.plus.as_deref(),
            Step::Hash => None,
        }
    }

    /// The child for `step`, if any (`Hash` has no node).
    fn child_mut(&mut self, step: Step<'_>) -> Option<&mut Node<T>> {
        match step {
            Step::Literal(level) => self.children.as_mut()?.get_mut(level),
            Step::Plus => self.plus.as_deref_mut(),
            Step::Hash => None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            value: None,
            children: None,
            plus: None,
            hash: None,
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TopicTrie<T> {
    /// An empty trie; allocates nothing until the first insert.
    pub fn new() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }

    /// Number of filters stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no filter is stored, e.g. to skip routing for a topic nobody listens to.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value stored for exactly this filter (no wildcard matching: `a/+` finds only the
    /// filter `a/+`). For matching a topic name use [`TopicTrie::for_each_match`].
    pub fn get(&self, filter: &str) -> Option<&T> {
        let mut node = &self.root;
        for step in steps(filter) {
            if step == Step::Hash {
                return node.hash.as_ref().map(|leaf| &leaf.value);
            }
            node = node.child(step)?;
        }
        node.value.as_ref().map(|leaf| &leaf.value)
    }

    /// The value stored for exactly this filter, mutable (e.g. to add a subscriber to the set
    /// kept for a filter).
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut T> {
        let mut node = &mut self.root;
        for step in steps(filter) {
            if step == Step::Hash {
                return node.hash.as_mut().map(|leaf| &mut leaf.value);
            }
            node = node.child_mut(step)?;
        }
        node.value.as_mut().map(|leaf| &mut leaf.value)
    }

    /// The value stored for this filter, inserting `f()` first if there is none: one walk for the
    /// router's "add a subscriber to this filter's set".
    pub fn entry_or_insert_with(&mut self, filter: &str, f: impl FnOnce() -> T) -> &mut T {
        let len = &mut self.len;
        let mut node = &mut self.root;
        for step in steps(filter) {
            node = match step {
                Step::Literal(level) => node
                    .children
                    .get_or_insert_with(Box::default)
                    .entry(Box::from(level))
                    .or_default(),
                Step::Plus => node.plus.get_or_insert_with(Box::default),
                Step::Hash => {
                    let leaf = node.hash.get_or_insert_with(|| {
                        *len += 1;
                        Box::new(Leaf {
                            filter: Box::from(filter),
                            value: f(),
                        })
                    });
                    return &mut leaf.value;
                }
            };
        }
        let leaf = node.value.get_or_insert_with(|| {
            *len += 1;
            Leaf {
                filter: Box::from(filter),
                value: f(),
            }
        });
        &mut leaf.value
    }

    /// Stores `value` for `filter`, returning the value it replaces.
    pub fn insert(&mut self, filter: &str, value: T) -> Option<T> {
        let mut value = Some(value);
        let slot = self.entry_or_insert_with(filter, || {
            // Only called when the filter is new, so `value` is still there.
            value
                .take()
                .unwrap_or_else(|| unreachable!("value taken twice"))
        });
        // `value` is still Some when the filter was already present: swap it in.
        value.map(|new| std::mem::replace(slot, new))
    }

    /// Removes the value stored for exactly this filter and drops the nodes that no longer lead
    /// to any value, so that a trie under subscribe/unsubscribe churn keeps a bounded size.
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        // First walk: take the value and find the deepest node on the path that must stay
        // (the root, or a node holding something besides the path). Iterative rather than
        // recursive because a filter may have tens of thousands of levels.
        let mut keep_depth = 0;
        let mut depth = 0;
        let mut node = &mut self.root;
        let mut hash_leaf = false;
        for step in steps(filter) {
            if step == Step::Hash {
                hash_leaf = true;
                break;
            }
            if depth > 0 && (node.value.is_some() || node.hash.is_some() || node.child_count() > 1)
            {
                keep_depth = depth;
            }
            node = node.child_mut(step)?;
            depth += 1;
        }
        let removed = if hash_leaf {
            node.hash.take()?.value
        } else {
            node.value.take()?.value
        };
        self.len -= 1;

        // Second walk: if the last node is now empty, cut the chain of nodes that led only to it.
        if depth > 0 && node.is_empty() {
            let mut node = &mut self.root;
            for (i, step) in steps(filter).enumerate() {
                if i == keep_depth {
                    match step {
                        Step::Literal(level) => {
                            if let Some(children) = node.children.as_mut() {
                                drop(children.remove(level));
                                if children.is_empty() {
                                    node.children = None;
                                }
                            }
                        }
                        Step::Plus => node.plus = None,
                        Step::Hash => {}
                    }
                    break;
                }
                match node.child_mut(step) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        Some(removed)
    }

    /// Calls `f(filter, value)` for every stored filter that matches the topic name `topic`, each
    /// exactly once, in no particular order. Allocates nothing.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a str, &'a T)) {
        let _ = self.try_for_each_match(topic, &mut |filter, value| {
            f(filter, value);
            ControlFlow::Continue(())
        });
    }

    /// Whether any stored filter matches `topic`, stopping at the first: the ACL check
    /// ("may this user publish here?") needs a yes or no, not the list.
    pub fn any_match(&self, topic: &str) -> bool {
        self.try_for_each_match(topic, &mut |_, _| ControlFlow::Break(()))
            .is_break()
    }

    /// The walk behind [`TopicTrie::for_each_match`] and [`TopicTrie::any_match`]: stops as soon
    /// as `f` breaks.
    fn try_for_each_match<'a, F>(&'a self, topic: &str, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(&'a str, &'a T) -> ControlFlow<()>,
    {
        // MQTT 5.0 §4.7.2: `+` and `#` as the first level never match `$`-topics.
        let wildcards = !topic.starts_with('$');
        walk(&self.root, Some(topic), wildcards, f)
    }
}

/// Visits the values under `node` that match `rest`, the topic levels after `node`'s (`None` when
/// the topic ends at `node`). `wildcards` is false only at the root of a `$`-topic.
///
/// Recursion happens only where the walk forks (a literal and a `+` child both match); a chain
/// of single matches is a loop, so a deep filter cannot exhaust the stack unless it is one of
/// as many filters as it has levels.
fn walk<'a, T, F>(
    mut node: &'a Node<T>,
    mut rest: Option<&str>,
    mut wildcards: bool,
    f: &mut F,
) -> ControlFlow<()>
where
    F: FnMut(&'a str, &'a T) -> ControlFlow<()>,
{
    loop {
        // A final `#` matches whatever remains, even nothing (`a/#` matches `a`).
        if wildcards {
            if let Some(leaf) = &node.hash {
                f(&leaf.filter, &leaf.value)?;
            }
        }
        let Some(levels) = rest else {
            if let Some(leaf) = &node.value {
                f(&leaf.filter, &leaf.value)?;
            }
            return ControlFlow::Continue(());
        };
        // A byte search: levels are short, and `split_once` went through the generic
        // pattern searcher for every level of every routed message. `/` is ASCII, so the
        // index is a character boundary.
        let (level, tail) = match levels.bytes().position(|b| b == b'/') {
            Some(i) => (&levels[..i], Some(&levels[i + 1..])),
            None => (levels, None),
        };
        let literal = node.children.as_ref().and_then(|c| c.get(level));
        let plus = if wildcards {
            node.plus.as_deref()
        } else {
            None
        };
        node = match (literal, plus) {
            (Some(literal), Some(plus)) => {
                walk(literal, tail, true, f)?;
                plus
            }
            (Some(next), None) | (None, Some(next)) => next,
            (None, None) => return ControlFlow::Continue(()),
        };
        rest = tail;
        wildcards = true;
    }
}

impl<T> Node<T> {
    /// Moves the child nodes of `self` onto `stack`.
    fn take_children(&mut self, stack: &mut Vec<Node<T>>) {
        if let Some(children) = self.children.take() {
            stack.extend(children.into_values());
        }
        if let Some(plus) = self.plus.take() {
            stack.push(*plus);
        }
    }
}

impl<T> Drop for Node<T> {
    /// Frees the subtree node by node: the default recursive drop would overflow the stack on a
    /// filter with tens of thousands of levels (when the trie is dropped, or when `remove` cuts
    /// a long chain).
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
            // `node` drops here with no children left, so its own `drop` returns at once.
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for TopicTrie<T> {
    /// Lists the filters and values (not the node structure, which says nothing useful).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            for leaf in node.value.iter().chain(node.hash.as_deref()) {
                map.entry(&leaf.filter, &leaf.value);
            }
            stack.extend(node.children.iter().flat_map(|c| c.values()));
            stack.extend(node.plus.as_deref());
        }
        map.finish()
    }
}

/// The number of levels of a topic name or filter (`a//b` has three): what it costs in a tree
/// of levels, counted without splitting.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&byte| byte == b'/').count() + 1
}

/// Whether the filter `filter` matches the topic name `topic`, by the rules in the module
/// documentation. For one-off checks; to test one topic against many filters use a
/// [`TopicTrie`].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter == "#" || filter.split('/').next() == Some("+")) {
        return false;
    }
    let mut filter_steps = steps(filter);
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_steps.next(), topic_levels.next()) {
            (Some(Step::Hash), _) => return true,
            (Some(Step::Plus), Some(_)) => {}
            (Some(Step::Literal(f)), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic name matched by the filter `inner` is also matched by the filter `outer`.
///
/// Why: a user allowed to read `gerrit/#` may subscribe to `gerrit/+/x` (a subset) but not to `#`
/// (which would also deliver topics outside the grant).
pub fn is_subset(inner: &str, outer: &str) -> bool {
    // The `$` rule: `+` or `#` as outer's first level does not cover `$`-topics, which inner
    // matches when its first level is a literal starting with `$`.
    let inner_first = inner.split('/').next().unwrap_or_default();
    let outer_first_wild = outer == "#" || outer.split('/').next() == Some("+");
    if outer_first_wild && inner_first.starts_with('$') {
        return false;
    }
    let mut inner_steps = steps(inner);
    let mut outer_steps = steps(outer);
    loop {
        match (inner_steps.next(), outer_steps.next()) {
            // A final `#` in outer covers any rest of inner, including none.
            (_, Some(Step::Hash)) => return true,
            (Some(Step::Plus | Step::Literal(_)), Some(Step::Plus)) => {}
            (Some(Step::Literal(i)), Some(Step::Literal(o))) if i == o => {}
            (None, None) => return true,
            // Inner is wider at this level (`+` or `#` against a literal, `#` against `+`), or
            // one filter has levels the other lacks.
            _ => return false,
        }
    }
}

/// Why a topic filter is not valid (MQTT 5.0 §4.7.1), for error messages that say what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFilter {
    /// The filter is the empty string.
    #[error("a topic filter must not be empty")]
    Empty,
    /// Longer than MQTT's 65535-byte string limit.
    #[error("a topic filter must be at most 65535 bytes long")]
    TooLong,
    /// Contains U+0000, which MQTT forbids in strings.
    #[error("a topic filter must not contain the NUL character")]
    Nul,
    /// `#` somewhere other than alone in the last level.
    #[error("`#` must be the whole last level (as in `a/#`)")]
    MisplacedHash,
    /// `+` sharing a level with other characters.
    #[error("`+` must be a whole level (as in `a/+/b`), not part of one")]
    MisplacedPlus,
}

/// Checks that `filter` is a valid MQTT topic filter (without the `$share/<group>/` prefix).
///
/// Why here and not only in the codec: the users file names filters too, and the ACL code wants
/// the same rules the trie matches by.
///
/// # Errors
/// The first rule the filter breaks.
pub fn check_filter(filter: &str) -> Result<(), InvalidFilter> {
    if filter.is_empty() {
        return Err(InvalidFilter::Empty);
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err(InvalidFilter::TooLong);
    }
    if filter.contains('\0') {
        return Err(InvalidFilter::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(InvalidFilter::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(InvalidFilter::MisplacedPlus);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filters that match `topic` according to the trie, sorted.
    fn trie_matches<T>(trie: &TopicTrie<T>, topic: &str) -> Vec<String> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |filter, _| found.push(filter.to_owned()));
        found.sort();
        found
    }

    fn trie_of(filters: &[&str]) -> TopicTrie<usize> {
        let mut trie = TopicTrie::new();
        for (i, filter) in filters.iter().enumerate() {
            trie.insert(filter, i);
        }
        trie
    }

    /// Checks `matches`, the trie and `any_match` agree with the expectation.
    fn check(filter: &str, topic: &str, expected: bool) {
        assert_eq!(
            matches(filter, topic),
            expected,
            "matches({filter:?}, {topic:?})"
        );
        let trie = trie_of(&[filter]);
        let found = trie_matches(&trie, topic);
        assert_eq!(!found.is_empty(), expected, "trie {filter:?} on {topic:?}");
        assert_eq!(
            trie.any_match(topic),
            expected,
            "any_match {filter:?} on {topic:?}"
        );
    }

    #[test]
    fn spec_examples_multi_level_wildcard() {
        // MQTT 5.0 §4.7.1.2
        let f = "sport/tennis/player1/#";
        check(f, "sport/tennis/player1", true);
        check(f, "sport/tennis/player1/ranking", true);
        check(f, "sport/tennis/player1/score/wimbledon", true);
        check(f, "sport/tennis/player2", false);
        check(f, "sport/tennis", false);
        check("sport/#", "sport", true);
        check("#", "sport/tennis/player1", true);
        check("#", "sport", true);
        check("#", "/", true);
    }

    #[test]
    fn spec_examples_single_level_wildcard() {
        // MQTT 5.0 §4.7.1.3
        check("sport/tennis/+", "sport/tennis/player1", true);
        check("sport/tennis/+", "sport/tennis/player2", true);
        check("sport/tennis/+", "sport/tennis/player1/ranking", false);
        check("sport/+", "sport", false);
        check("sport/+", "sport/", true);
        check("+", "sport", true);
        check("+/+", "/finance", true);
        check("/+", "/finance", true);
        check("+", "/finance", false);
        check("+/tennis/#", "sport/tennis/player1", true);
        check("+/tennis/#", "sport/tennis", true);
        check("sport/+/player1", "sport/tennis/player1", true);
        check("sport/+/player1", "sport/tennis/player2", false);
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // MQTT 5.0 §4.7.2
        check("#", "$SYS/broker/clients", false);
        check("+/broker/clients", "$SYS/broker/clients", false);
        check("+", "$SYS", false);
        check("$SYS/#", "$SYS/broker/clients", true);
        check("$SYS/#", "$SYS", true);
        check("$SYS/monitor/+", "$SYS/monitor/Clients", true);
        check("$SYS/+/clients", "$SYS/broker/clients", true);
        // Only the first level counts.
        check("a/+", "a/$b", true);
        check("a/#", "a/$b/c", true);
        check("+/$b", "a/$b", true);
    }

    #[test]
    fn empty_levels_are_levels() {
        check("/a", "/a", true);
        check("/a", "a", false);
        check("a//b", "a//b", true);
        check("a//b", "a/b", false);
        check("a/+/b", "a//b", true);
        check("+/a", "/a", true);
        check("a/", "a/", true);
        check("a/", "a", false);
        check("a/#", "a/", true);
        check("a/#", "a//", true);
        check("+", "", true);
        check("a", "", false);
    }

    #[test]
    fn literal_text_and_misplaced_wildcards() {
        check("a/b", "a/b", true);
        check("a/b", "a/b/c", false);
        check("a/b/c", "a/b", false);
        check("a/B", "a/b", false);
        // Invalid filters are stored and matched as text.
        check("a/#/b", "a/x/b", false);
        check("a/#/b", "a/#/b", true);
        check("a+", "a+", true);
        check("a+", "ab", false);
    }

    #[test]
    fn many_filters_each_match_reported_once() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/b", "a/b/#", "+/b", "+/+", "+/#", "a/+/#", "a/b/c",
            "$SYS/#",
        ];
        let trie = trie_of(&filters);
        assert_eq!(trie.len(), filters.len());
        assert_eq!(
            trie_matches(&trie, "a/b"),
            ["#", "+/#", "+/+", "+/b", "a/#", "a/+", "a/+/#", "a/b", "a/b/#"]
        );
        assert_eq!(trie_matches(&trie, "a"), ["#", "+", "+/#", "a", "a/#"]);
        assert_eq!(trie_matches(&trie, "$SYS/x"), ["$SYS/#"]);
        assert!(trie_matches(&trie, "$other").is_empty());
        let values: Vec<usize> = {
            let mut v = Vec::new();
            trie.for_each_match("a/b/c", |_, value| v.push(*value));
            v.sort();
            v
        };
        // "#", "+/#", "a/#", "a/+/#", "a/b/#", "a/b/c"
        assert_eq!(values, [0, 3, 6, 9, 10, 11]);
    }

    #[test]
    fn insert_get_replace() {
        let mut trie = TopicTrie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/+/#", 1), None);
        assert_eq!(trie.insert("a/+/#", 2), Some(1));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get("a/+/#"), Some(&2));
        assert_eq!(trie.get("a/+"), None);
        assert_eq!(trie.get("a/x/#"), None);
        assert_eq!(trie.get("a"), None);
        if let Some(v) = trie.get_mut("a/+/#") {
            *v = 3;
        }
        assert_eq!(trie.get("a/+/#"), Some(&3));
        *trie.entry_or_insert_with("a/+/#", || 100) += 1;
        assert_eq!(trie.get("a/+/#"), Some(&4));
        *trie.entry_or_insert_with("a", || 100) += 1;
        assert_eq!(trie.get("a"), Some(&101));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.insert("", 7), None);
        assert_eq!(trie.get(""), Some(&7));
        assert_eq!(trie.len(), 3);
    }

    /// Counts nodes, to check that removal prunes.
    fn node_count<T>(trie: &TopicTrie<T>) -> usize {
        let mut count = 0;
        let mut stack = vec![&trie.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.iter().flat_map(|c| c.values()));
            stack.extend(node.plus.as_deref());
        }
        count
    }

    #[test]
    fn remove_prunes_empty_nodes() {
        let mut trie = TopicTrie::new();
        trie.insert("a/b/c/d", 1);
        trie.insert("a/b", 2);
        trie.insert("a/+/#", 3);
        trie.insert("x/y/#", 4);
        trie.insert("#", 5);
        assert_eq!(node_count(&trie), 1 + 4 + 1 + 2);
        assert_eq!(trie.remove("a/b/c"), None);
        assert_eq!(trie.remove("a/b/#"), None);
        assert_eq!(trie.remove("a/+"), None);
        assert_eq!(trie.get("a/b"), Some(&2));
        assert_eq!(trie.len(), 5);
        assert_eq!(trie.remove("a/b/c/d/e"), None);
        assert_eq!(trie.remove("a/b/c/d"), Some(1));
        assert_eq!(node_count(&trie), 1 + 2 + 1 + 2);
        assert_eq!(trie.remove("a/b/c/d"), None);
        assert_eq!(trie.remove("x/y/#"), Some(4));
        assert_eq!(node_count(&trie), 1 + 2 + 1);
        assert_eq!(trie.remove("a/b"), Some(2));
        assert_eq!(node_count(&trie), 1 + 1 + 1);
        assert_eq!(trie_matches(&trie, "a/b"), ["#", "a/+/#"]);
        assert_eq!(trie.remove("a/+/#"), Some(3));
        assert_eq!(trie.remove("#"), Some(5));
        assert_eq!(node_count(&trie), 1);
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    #[test]
    fn churn_leaves_no_nodes_behind() {
        let mut trie = TopicTrie::new();
        let filters = [
            "a/b/c", "a/b", "a/+/c", "a/#", "+/+/+", "a//", "", "/", "a/b/c/#",
        ];
        for round in 0..3 {
            for (i, f) in filters.iter().enumerate() {
                trie.insert(f, i + round);
            }
            assert_eq!(trie.len(), filters.len());
            for f in filters.iter().rev() {
                assert!(trie.remove(f).is_some(), "{f}");
            }
            assert_eq!(node_count(&trie), 1);
            assert!(trie.is_empty());
        }
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let deep = "a/".repeat(40_000) + "#";
        let topic = "a/".repeat(40_000);
        let mut trie = TopicTrie::new();
        trie.insert(&deep, ());
        trie.insert("+", ());
        assert!(trie.any_match(&topic));
        assert!(trie.any_match(&topic[..topic.len() - 1]));
        assert!(matches(&deep, &topic));
        drop(trie);
        // Removal cuts the whole 40 000-node chain at once.
        let mut chain = TopicTrie::new();
        chain.insert(&deep, ());
        chain.insert("a", ());
        assert_eq!(chain.remove(&deep), Some(()));
        assert_eq!(node_count(&chain), 2);
    }

    #[test]
    fn debug_lists_filters() {
        let trie = trie_of(&["a/#"]);
        assert_eq!(format!("{trie:?}"), r#"{"a/#": 0}"#);
    }

    #[test]
    fn subset() {
        let yes = [
            ("gerrit/+/x", "gerrit/#"),
            ("gerrit/#", "gerrit/#"),
            ("gerrit", "gerrit/#"),
            ("gerrit/a/b", "gerrit/+/b"),
            ("gerrit/+/b", "gerrit/+/b"),
            ("a/+", "a/#"),
            ("a/+", "+/+"),
            ("#", "#"),
            ("+", "#"),
            ("a/b/c", "#"),
            ("$SYS/x", "$SYS/#"),
            ("a/$x", "a/+"),
            ("", "#"),
            ("", "+"),
        ];
        for (inner, outer) in yes {
            assert!(is_subset(inner, outer), "{inner:?} within {outer:?}");
        }
        let no = [
            ("#", "gerrit/#"),
            ("+", "gerrit/#"),
            ("gerrit/#", "gerrit/+"),
            ("gerrit/#", "gerrit/+/#"),
            ("gerrit", "gerrit/+"),
            ("gerrit/a", "gerrit"),
            ("gerrit/+", "gerrit/a"),
            ("a/b", "a/c"),
            ("$SYS/x", "#"),
            ("$SYS/x", "+/x"),
            ("$SYS", "+"),
            ("gerrit/#", "gerrit/a/#"),
        ];
        for (inner, outer) in no {
            assert!(!is_subset(inner, outer), "{inner:?} not within {outer:?}");
        }
    }

    #[test]
    fn filter_validation() {
        for good in [
            "#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "$SYS/#", "a b", "é/ü",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        let bad = [
            ("", InvalidFilter::Empty),
            ("a/#/b", InvalidFilter::MisplacedHash),
            ("a#", InvalidFilter::MisplacedHash),
            ("#/", InvalidFilter::MisplacedHash),
            ("a/b+", InvalidFilter::MisplacedPlus),
            ("++", InvalidFilter::MisplacedPlus),
            ("a\0", InvalidFilter::Nul),
        ];
        for (filter, why) in bad {
            assert_eq!(check_filter(filter), Err(why), "{filter:?}");
        }
        assert_eq!(
            check_filter(&"a".repeat(65_536)),
            Err(InvalidFilter::TooLong)
        );
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce without a
    /// property-testing dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).expect("fits")
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        /// 1 to `max` levels drawn from `alphabet`, with an optional final `#`.
        fn filter(&mut self, alphabet: &[&str], max: usize, wildcards: bool) -> String {
            let n = 1 + self.below(max);
            let mut levels: Vec<&str> = (0..n).map(|_| self.pick(alphabet)).collect();
            if wildcards && self.below(3) == 0 {
                levels.push("#");
            }
            levels.join("/")
        }
    }

    #[test]
    fn trie_agrees_with_matches_on_random_filters() {
        let filter_levels = ["a", "b", "", "+", "+", "$s"];
        let topic_levels = ["a", "b", "", "c", "$s"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut found = 0;
        for _round in 0..200 {
            let mut trie = TopicTrie::new();
            let mut filters = Vec::new();
            for _ in 0..rng.below(30) {
                let filter = rng.filter(&filter_levels, 4, true);
                trie.insert(&filter, ());
                filters.push(filter);
            }
            filters.sort();
            filters.dedup();
            assert_eq!(trie.len(), filters.len());
            // Remove a few, to exercise matching after pruning.
            for _ in 0..rng.below(5) {
                if filters.is_empty() {
                    break;
                }
                let gone = filters.remove(rng.below(filters.len()));
                assert_eq!(trie.remove(&gone), Some(()));
            }
            for _ in 0..50 {
                let topic = rng.filter(&topic_levels, 5, false);
                let expected: Vec<String> = filters
                    .iter()
                    .filter(|f| matches(f, &topic))
                    .cloned()
                    .collect();
                assert_eq!(trie_matches(&trie, &topic), expected, "topic {topic:?}");
                assert_eq!(trie.any_match(&topic), !expected.is_empty());
                found += expected.len();
            }
        }
        assert!(
            found > 5_000,
            "only {found} matches: the generator is too sparse"
        );
    }

    /// Every topic of 1 to `max` levels over `alphabet`.
    fn all_topics(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut last: Vec<String> = alphabet.iter().map(|l| (*l).to_owned()).collect();
        for _ in 1..max {
            all.extend(last.iter().cloned());
            last = last
                .iter()
                .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        all.extend(last);
        all
    }

    #[test]
    fn subset_agrees_with_brute_force() {
        // Filters of up to 3 levels (+1 for `#`); topics of up to 5 levels, with a level ("z")
        // that no filter names, so that any topic in inner but not outer has a witness here.
        let filter_levels = ["a", "", "+", "$s"];
        let topics = all_topics(&["a", "", "z", "$s"], 5);
        let mut rng = Rng(42);
        let mut subsets = 0;
        for _ in 0..1500 {
            let inner = rng.filter(&filter_levels, 3, true);
            let outer = rng.filter(&filter_levels, 3, true);
            let brute = topics
                .iter()
                .all(|t| !matches(&inner, t) || matches(&outer, t));
            assert_eq!(
                is_subset(&inner, &outer),
                brute,
                "{inner:?} within {outer:?}"
            );
            assert!(is_subset(&inner, &inner), "{inner:?} within itself");
            subsets += usize::from(brute);
        }
        // The generator must produce both answers often enough for the test to mean something.
        assert!((100..1400).contains(&subsets), "{subsets} subsets");
    }
}
