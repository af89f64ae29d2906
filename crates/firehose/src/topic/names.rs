//! Values stored by topic name and found by topic filter: the reverse of [`TopicTrie`], for
//! retained messages.
//!
//! Why a tree of levels: a SUBSCRIBE must find every retained message its filter matches.
//! Testing each stored topic against the filter costs the whole set on every subscribe (a
//! reconnect storm of 10,000 clients over 100,000 retained topics is a billion tests); walking
//! the filter's levels down the tree visits only the branches it can match.
//!
//! [`TopicTrie`]: super::TopicTrie

use std::collections::HashMap;

use super::{steps, Step};

/// A map from topic name to `T`, searchable by topic filter with the matching rules of the
/// parent module (`+`, `#`, and `$` topics hidden from a first-level wildcard).
pub struct TopicNames<T> {
    /// The level before the first: its children are the first levels of every name.
    root: Level<T>,
    /// Number of stored values.
    len: usize,
}

/// The literal next levels of a level, by their text. SipHash, as in the filter trie:
/// publishers choose the names, and a subscriber sees the order of a wildcard's matches.
type Children<T> = HashMap<Box<str>, Level<T>>;

/// One level of the stored names.
struct Level<T> {
    /// The value of the name that ends here.
    value: Option<T>,
    /// The next levels; `None` while there are none (boxed: most levels are the last of a
    /// name, and an empty map would be 48 bytes in each).
    #[allow(clippy::box_collection)]
    children: Option<Box<Children<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            value: None,
            children: None,
        }
    }
}

impl<T> Default for TopicNames<T> {
    fn default() -> Self {
        TopicNames {
            root: Level::default(),
            len: 0,
        }
    }
}

impl<T> TopicNames<T> {
    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `topic`; returns what was there.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut level = &mut self.root;
        for name in topic.split('/') {
            level = level
                .children
                .get_or_insert_with(Box::default)
                .entry(Box::from(name))
                .or_default();
        }
        let replaced = level.value.replace(value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// The value stored under exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut level = &self.root;
        for name in topic.split('/') {
            level = level.children.as_ref()?.get(name)?;
        }
        level.value.as_ref()
    }

    /// Removes and returns the value stored under `topic`, and the levels that lead only to
    /// it.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let names: Vec<&str> = topic.split('/').collect();
        // The deepest level on the way that must stay (the root, or one that holds another
        // value or other branches): the branch below it is cut off whole.
        let mut keep = 0;
        let mut level = &self.root;
        for (depth, name) in names.iter().enumerate() {
            if depth > 0 && (level.value.is_some() || level.branches() > 1) {
                keep = depth;
            }
            level = level.children.as_ref()?.get(*name)?;
        }
        level.value.as_ref()?;
        let removed = if level.branches() > 0 {
            // Longer names go on through it: only its value goes.
            self.level_mut(&names).and_then(|l| l.value.take())
        } else {
            self.cut(&names, keep)
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Cuts off the branch below the level of `names[..keep]` towards the name made of
    /// `names`, and returns that name's value.
    fn cut(&mut self, names: &[&str], keep: usize) -> Option<T> {
        let parent = self.level_mut(&names[..keep])?;
        let children = parent.children.as_mut()?;
        let mut branch = children.remove(names[keep])?;
        if children.is_empty() {
            parent.children = None;
        }
        let mut level = &mut branch;
        for name in &names[keep + 1..] {
            level = level.children.as_mut()?.get_mut(*name)?;
        }
        level.value.take()
    }

    /// Every value whose topic `filter` matches, in no particular order.
    pub fn matching(&self, filter: &str) -> Vec<&T> {
        let steps: Vec<Step<'_>> = steps(filter).collect();
        let mut found = Vec::new();
        // Levels still to match: the level and how many of the filter's steps led to it.
        let mut stack = vec![(&self.root, 0)];
        while let Some((level, done)) = stack.pop() {
            let first = done == 0;
            let Some(step) = steps.get(done) else {
                found.extend(level.value.as_ref());
                continue;
            };
            match step {
                Step::Literal(name) => {
                    if let Some(next) = level.children.as_ref().and_then(|c| c.get(*name)) {
                        stack.push((next, done + 1));
                    }
                }
                Step::Plus => {
                    stack.extend(level.visible_children(first).map(|next| (next, done + 1)))
                }
                Step::Hash => {
                    // `a/#` matches `a` too; the root is no name.
                    if !first {
                        found.extend(level.value.as_ref());
                    }
                    let mut subtree: Vec<&Level<T>> = level.visible_children(first).collect();
                    while let Some(below) = subtree.pop() {
                        found.extend(below.value.as_ref());
                        subtree.extend(below.children.iter().flat_map(|c| c.values()));
                    }
                }
            }
        }
        found
    }

    /// The level of the name made of `names`, if it is stored.
    fn level_mut(&mut self, names: &[&str]) -> Option<&mut Level<T>> {
        let mut level = &mut self.root;
        for name in names {
            level = level.children.as_mut()?.get_mut(*name)?;
        }
        Some(level)
    }
}

impl<T> Level<T> {
    /// Number of next levels.
    fn branches(&self) -> usize {
        self.children.as_ref().map_or(0, |c| c.len())
    }

    /// The next levels a wildcard may enter: at the first level, not those of `$` topics.
    fn visible_children(&self, first: bool) -> impl Iterator<Item = &Level<T>> {
        self.children
            .iter()
            .flat_map(|c| c.iter())
            .filter(move |(name, _)| !(first && name.starts_with('$')))
            .map(|(_, level)| level)
    }
}

impl<T> Drop for Level<T> {
    /// Frees the subtree level by level: the default recursive drop would overflow the stack
    /// on a name of tens of thousands of levels.
    fn drop(&mut self) {
        let mut stack: Vec<Level<T>> = Vec::new();
        if let Some(children) = self.children.take() {
            stack.extend(children.into_values());
        }
        while let Some(mut level) = stack.pop() {
            if let Some(children) = level.children.take() {
                stack.extend(children.into_values());
            }
        }
    }
}

impl<T> std::fmt::Debug for TopicNames<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicNames")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "a//b",
        "a/",
        "/a",
        "/",
        "b/c",
        "$SYS/broker/uptime",
        "$SYS",
        "$other/x",
        "gerrit/project/x/comment-added",
        "gerrit/project/y/change-merged",
    ];

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/+",
        "+/#",
        "a",
        "a/#",
        "a/+",
        "a/+/c",
        "a/b/#",
        "/+",
        "/#",
        "+/",
        "$SYS/#",
        "$SYS",
        "$SYS/+/uptime",
        "gerrit/project/+/#",
        "gerrit/+/x/+",
        "none/#",
        "a/b/c/d",
    ];

    fn names(topics: &[&str]) -> TopicNames<String> {
        let mut names = TopicNames::default();
        for topic in topics {
            names.insert(topic, topic.to_string());
        }
        names
    }

    fn found(names: &TopicNames<String>, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = names.matching(filter).into_iter().cloned().collect();
        found.sort();
        found
    }

    #[test]
    fn matching_finds_what_testing_every_topic_finds() {
        let names = names(TOPICS);
        assert_eq!(names.len(), TOPICS.len());
        for filter in FILTERS {
            let mut expected: Vec<String> = TOPICS
                .iter()
                .filter(|t| matches(filter, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(found(&names, filter), expected, "filter {filter:?}");
        }
    }

    /// A small deterministic generator (no dependency for one test).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }

        fn path(&mut self, levels: &[&str], max: usize) -> String {
            let count = 1 + self.below(max);
            (0..count)
                .map(|_| levels[self.below(levels.len())])
                .collect::<Vec<_>>()
                .join("/")
        }
    }

    #[test]
    fn random_names_and_filters_agree_with_testing_every_topic_also_after_removals() {
        let mut rng = Lcg(7);
        let mut topics: Vec<String> = (0..400)
            .map(|_| rng.path(&["a", "b", "", "$s"], 4))
            .collect();
        topics.sort();
        topics.dedup();
        let filters: Vec<String> = (0..300)
            .map(|_| {
                let mut filter = rng.path(&["a", "b", "", "+", "$s"], 4);
                if rng.below(3) == 0 {
                    filter.push_str("/#");
                }
                filter
            })
            .chain(["#".to_string()])
            .collect();
        let mut names = TopicNames::default();
        for topic in &topics {
            names.insert(topic, topic.clone());
        }
        for round in 0..2 {
            assert_eq!(names.len(), topics.len());
            for filter in &filters {
                let expected: Vec<String> = topics
                    .iter()
                    .filter(|t| matches(filter, t))
                    .cloned()
                    .collect();
                assert_eq!(
                    found(&names, filter),
                    expected,
                    "round {round}, filter {filter:?}"
                );
            }
            let (gone, kept): (Vec<String>, Vec<String>) =
                topics.into_iter().partition(|_| rng.below(2) == 0);
            for topic in &gone {
                assert_eq!(names.remove(topic).as_ref(), Some(topic));
            }
            topics = kept;
        }
    }

    #[test]
    fn insert_replaces_and_remove_prunes_what_leads_only_to_the_removed_name() {
        let mut names = names(&["a/b/c/d", "a/b", "a/x"]);
        assert_eq!(names.insert("a/b", "again".into()).as_deref(), Some("a/b"));
        assert_eq!(names.len(), 3);
        assert_eq!(found(&names, "a/b"), ["again"]);
        assert_eq!(names.get("a/b").map(String::as_str), Some("again"));
        assert_eq!(names.get("a/b/c"), None, "a level on the way, not a name");
        assert_eq!(names.get("a/b/c/d/e"), None);
        assert_eq!(names.get("a/x/"), None);

        assert_eq!(
            names.remove("a/b/c"),
            None,
            "not a stored name, only a level"
        );
        assert_eq!(names.remove("a/b/c/d/e"), None);
        assert_eq!(names.remove("a/b/c/d").as_deref(), Some("a/b/c/d"));
        assert_eq!(names.len(), 2);
        assert_eq!(found(&names, "#"), ["a/x", "again"]);
        // `a/b` holds a value: the cut stopped there, and it lost its branch.
        assert!(names
            .level_mut(&["a", "b"])
            .is_some_and(|l| l.children.is_none()));

        assert_eq!(names.remove("a/b").as_deref(), Some("again"));
        assert_eq!(names.remove("a/b"), None, "removed once");
        assert_eq!(names.remove("a/x").as_deref(), Some("a/x"));
        assert!(names.is_empty());
        assert!(names.root.children.is_none(), "every level was pruned");
    }

    #[test]
    fn removing_a_name_that_longer_names_go_through_keeps_them() {
        let mut names = names(&["a/b", "a/b/c", "a/b/d"]);
        assert_eq!(names.remove("a/b").as_deref(), Some("a/b"));
        assert_eq!(found(&names, "a/#"), ["a/b/c", "a/b/d"]);
        assert_eq!(names.remove("a/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(found(&names, "#"), ["a/b/d"]);
    }

    #[test]
    fn a_name_of_forty_thousand_levels_is_stored_found_removed_and_dropped() {
        let deep = vec!["x"; 40_000].join("/");
        let mut names = names(&[deep.as_str(), "x"]);
        assert_eq!(names.matching("x/#").len(), 2);
        assert_eq!(names.matching(&deep).len(), 1);
        let plus = vec!["+"; 40_000].join("/");
        assert_eq!(names.matching(&plus).len(), 1);
        assert_eq!(names.remove(&deep).as_deref(), Some(deep.as_str()));
        names.insert(&deep, "again".into());
        drop(names);
    }
}
