use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use regex::{Regex, RegexBuilder};

use super::Shown;

/// How a matcher compares a label value (`=`, `!=`, `=~`, `!~`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// Every echoed part is [`Shown`]: a matcher arrives from the network, and its error text goes
/// into a gRPC status, which clients refuse above 16 KiB of metadata.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regex {:?} in matcher on {:?}: {}", Shown(.value), Shown(.name), Shown(.reason))]
    BadRegex {
        name: String,
        value: String,
        reason: String,
    },
    #[error(
        "regex in matcher on {:?} is {len} bytes, over the limit of {limit} bytes on a regex's length",
        Shown(.name)
    )]
    RegexTooLong {
        name: String,
        len: usize,
        limit: usize,
    },
    #[error(
        "regex {:?} in matcher on {:?} compiles to more than the limit of {limit} bytes on a compiled regex",
        Shown(.value),
        Shown(.name)
    )]
    RegexTooBig {
        name: String,
        value: String,
        limit: usize,
    },
}

/// A label matcher with Prometheus semantics: a missing label has the value `""`, and regexes
/// are fully anchored with `.` matching newlines, as in Prometheus 3.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub kind: MatchType,
    pub name: String,
    pub value: String,
    /// Shared, so that clones and cache hits reuse one compiled program and its warmed caches.
    re: Option<Arc<Regex>>,
    /// The program is over one cache slot (256 KiB): matching it against one value can take a
    /// fraction of a millisecond (the lazy DFA thrashes on `.*`-heavy alternations).
    large: bool,
    /// Regex results precomputed for known values (see [`Matcher::with_known_values`]).
    memo: Option<Arc<HashMap<Box<str>, bool>>>,
}

impl Matcher {
    /// Longest regex accepted, in bytes of the pattern as sent. Prometheus and Thanos have no
    /// such bound; it is here because parsing is not covered by the compiled-size limit: a 1 MiB
    /// pattern takes ~200 ms to parse before that limit can refuse it, a 64 KiB one ~15 ms. 64 KiB
    /// still holds the `=~"a|b|…"` alternations dashboards build from multi-value variables
    /// (some 3 000 pod names).
    pub const MAX_REGEX_BYTES: usize = 64 << 10;

    /// Largest compiled program accepted (the regex crate's `size_limit`, counted per automaton).
    /// Compile time grows with it (~30 ms at worst for a pattern under
    /// [`Self::MAX_REGEX_BYTES`]); a 3 000-name alternation needs ~2 MiB, `\w{100}` more than 4.
    pub const REGEX_SIZE_LIMIT: usize = 4 << 20;

    /// The lazy DFA's transition cache per regex and thread, as the regex crate's default.
    /// Smaller is not safer: once the cache cannot hold the states a search needs, the crate
    /// falls back to its NFA engines, measured up to 1 000 times slower on costly patterns.
    pub const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;

    /// Slots of the process-wide regex cache ([`Matcher::cached`]): at most ~64 MiB of compiled
    /// programs (about twice that counting the reverse automata the regex crate also builds).
    /// Thanos's `--matcher-cache-size` counts entries (200 when enabled); here 256 small
    /// regexes, or 16 large ones, fit.
    pub const CACHE_SLOTS: usize = 256;

    pub fn new(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let (name, value) = (name.into(), value.into());
        let (re, large) = match kind {
            MatchType::Regex | MatchType::NotRegex => {
                let (re, slots) = compile_sized(&name, &value)?;
                (Some(re), slots > 1)
            }
            MatchType::Equal | MatchType::NotEqual => (None, false),
        };
        Ok(Self {
            kind,
            name,
            value,
            re,
            large,
            memo: None,
        })
    }

    /// Like [`Matcher::new`], with regexes taken from (and added to) the process-wide
    /// [`MatcherCache`]: Queriers send the same selectors on every dashboard refresh, and a
    /// large regex costs milliseconds to compile each time.
    pub fn cached(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(Self, Lookup), MatcherError> {
        GLOBAL_CACHE.matcher(kind, name.into(), value.into())
    }

    /// Reports whether a label value (`""` when the label is absent) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        if let Some(&found) = self.memo.as_ref().and_then(|m| m.get(v)) {
            return found == (self.kind == MatchType::Regex);
        }
        match (self.kind, &self.re) {
            (MatchType::Equal, _) => v == self.value,
            (MatchType::NotEqual, _) => v != self.value,
            (MatchType::Regex, Some(re)) => re.is_match(v),
            (MatchType::NotRegex, Some(re)) => !re.is_match(v),
            // Unreachable by construction: regex kinds always carry a compiled regex.
            (MatchType::Regex | MatchType::NotRegex, None) => false,
        }
    }

    /// Reports whether the matcher selects series that lack the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// Whether matching is costly enough to be worth [`Matcher::with_known_values`]: a regex
    /// whose program is over 256 KiB.
    pub fn is_costly(&self) -> bool {
        self.large
    }

    /// The same matcher with the regex already run on `values` (and on `""`), so that matching
    /// them later is a hash lookup; other values still run the regex. This lets a store match a
    /// costly regex before it takes a lock, instead of while holding it: the TSDB head matches
    /// every value of a label under its tenant's lock, which writes and Info also need.
    pub fn with_known_values<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Matcher {
        let Some(re) = &self.re else {
            return self.clone();
        };
        let mut memo: HashMap<Box<str>, bool> = values
            .into_iter()
            .map(|v| (v.into(), re.is_match(v)))
            .collect();
        memo.insert("".into(), re.is_match(""));
        Matcher {
            memo: Some(Arc::new(memo)),
            ..self.clone()
        }
    }

    /// Whether both matchers use the very same compiled regex (a cache hit).
    pub fn shares_regex(&self, other: &Matcher) -> bool {
        match (&self.re, &other.re) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Compiles `value` anchored as Prometheus does, refusing it past the length and `size_limit`
/// bounds. The regex crate's own error text repeats the whole pattern, so only its last line
/// (what is wrong) is kept.
fn compile(name: &str, value: &str, size_limit: usize) -> Result<Regex, MatcherError> {
    if value.len() > Matcher::MAX_REGEX_BYTES {
        return Err(MatcherError::RegexTooLong {
            name: name.to_string(),
            len: value.len(),
            limit: Matcher::MAX_REGEX_BYTES,
        });
    }
    RegexBuilder::new(&format!("^(?s:{value})$"))
        .size_limit(size_limit)
        .dfa_size_limit(Matcher::REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => MatcherError::RegexTooBig {
                name: name.to_string(),
                value: value.to_string(),
                limit,
            },
            other => {
                let text = other.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("error: "))
                    .unwrap_or(&text);
                MatcherError::BadRegex {
                    name: name.to_string(),
                    value: value.to_string(),
                    reason: reason.to_string(),
                }
            }
        })
}

/// What a [`Matcher::cached`] call did, for the `thanos_matchers_cache_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The matcher is a regex, so the cache was asked (Thanos counts only those too).
    pub requested: bool,
    pub hit: bool,
    /// Entries evicted to make room.
    pub evicted: usize,
    /// Entries held after the call.
    pub items: usize,
}

/// Compiled programs are charged in slots of this size: a regex that compiles within one slot
/// takes one, a larger one (up to [`Matcher::REGEX_SIZE_LIMIT`]) takes
/// `REGEX_SIZE_LIMIT / SLOT_BYTES`. Counting entries alone would let a few hundred 6-byte
/// patterns such as `\w{40}x1`, `\w{40}x2`, … pin a gigabyte.
const SLOT_BYTES: usize = 256 << 10;

/// Process-wide: matchers are plain values, and every StoreAPI server in the process benefits
/// from the same compiled programs.
static GLOBAL_CACHE: LazyLock<MatcherCache> =
    LazyLock::new(|| MatcherCache::new(Matcher::CACHE_SLOTS));

/// A bounded LRU of compiled regexes, keyed by the pattern alone: `=~` and `!~`, and matchers on
/// different labels, share one program.
#[derive(Debug)]
pub struct MatcherCache {
    slots: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Box<str>, Entry>,
    used_slots: usize,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    re: Arc<Regex>,
    slots: usize,
    last_used: u64,
}

impl MatcherCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    pub fn matcher(
        &self,
        kind: MatchType,
        name: String,
        value: String,
    ) -> Result<(Matcher, Lookup), MatcherError> {
        if matches!(kind, MatchType::Equal | MatchType::NotEqual) {
            return Ok((Matcher::new(kind, name, value)?, Lookup::default()));
        }
        let mut lookup = Lookup {
            requested: true,
            ..Lookup::default()
        };
        let (re, slots) = match self.get(&value) {
            Some((re, slots, items)) => {
                lookup.hit = true;
                lookup.items = items;
                (re, slots)
            }
            None => {
                // Compiled outside the lock, so a slow compile does not hold up hits; two
                // callers missing on the same pattern both compile and the first insert wins.
                let (re, slots) = compile_sized(&name, &value)?;
                let (re, evicted, items) = self.insert(&value, re, slots);
                lookup.evicted = evicted;
                lookup.items = items;
                (re, slots)
            }
        };
        Ok((
            Matcher {
                kind,
                name,
                value,
                re: Some(re),
                large: slots > 1,
                memo: None,
            },
            lookup,
        ))
    }

    fn get(&self, pattern: &str) -> Option<(Arc<Regex>, usize, usize)> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let items = inner.map.len();
        let e = inner.map.get_mut(pattern)?;
        e.last_used = tick;
        Some((e.re.clone(), e.slots, items))
    }

    /// Adds a compiled regex, evicting the least recently used entries until it fits; returns
    /// the entry now cached for the pattern, the number evicted and the entries held.
    fn insert(&self, pattern: &str, re: Arc<Regex>, slots: usize) -> (Arc<Regex>, usize, usize) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.map.get(pattern) {
            let re = e.re.clone();
            return (re, 0, inner.map.len());
        }
        if slots > self.slots {
            return (re, 0, inner.map.len());
        }
        let mut evicted = 0;
        while inner.used_slots + slots > self.slots {
            // A linear scan: a few hundred entries, next to the compile that got us here.
            let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.used_slots -= e.slots;
                evicted += 1;
            }
        }
        inner.tick += 1;
        let last_used = inner.tick;
        inner.used_slots += slots;
        inner.map.insert(
            pattern.into(),
            Entry {
                re: re.clone(),
                slots,
                last_used,
            },
        );
        (re, evicted, inner.map.len())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}

/// Compiles a regex and says how many cache slots it takes. The regex crate does not report a
/// program's size, so a first compile is bounded at one slot; only a pattern over it is
/// compiled again under the full limit (rare, and each try stops once over its limit).
fn compile_sized(name: &str, value: &str) -> Result<(Arc<Regex>, usize), MatcherError> {
    match compile(name, value, SLOT_BYTES) {
        Ok(re) => Ok((Arc::new(re), 1)),
        Err(MatcherError::RegexTooBig { .. }) => {
            let re = compile(name, value, Matcher::REGEX_SIZE_LIMIT)?;
            Ok((Arc::new(re), Matcher::REGEX_SIZE_LIMIT / SLOT_BYTES))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: MatchType, v: &str) -> Matcher {
        Matcher::new(kind, "l", v).unwrap()
    }

    #[test]
    fn regexes_are_anchored_and_dot_matches_newline() {
        assert!(m(MatchType::Regex, "a").matches("a"));
        assert!(!m(MatchType::Regex, "a").matches("ab"));
        assert!(!m(MatchType::Regex, "a").matches("ba"));
        assert!(m(MatchType::Regex, "a|b").matches("b"));
        assert!(m(MatchType::Regex, ".*").matches("x\ny"));
        assert!(m(MatchType::Regex, "^a$").matches("a"));
        assert!(!m(MatchType::NotRegex, "1|2.5").matches("2.5"));
        assert!(m(MatchType::NotRegex, "1|2.5").matches("2"));
    }

    #[test]
    fn empty_value_semantics() {
        assert!(m(MatchType::Equal, "").matches_empty());
        assert!(!m(MatchType::NotEqual, "").matches_empty());
        assert!(m(MatchType::Regex, "c||d").matches_empty());
        assert!(m(MatchType::Regex, ".*").matches_empty());
        assert!(!m(MatchType::Regex, ".+").matches_empty());
        assert!(m(MatchType::NotRegex, ".+").matches_empty());
    }

    #[test]
    fn bad_regex_is_an_error() {
        assert!(Matcher::new(MatchType::Regex, "l", "(").is_err());
    }

    #[test]
    fn regex_length_is_bounded_and_the_error_names_the_limit_briefly() {
        let at_limit = "a".repeat(Matcher::MAX_REGEX_BYTES);
        assert!(Matcher::new(MatchType::Regex, "l", at_limit).is_ok());
        let over = "a".repeat(Matcher::MAX_REGEX_BYTES + 1);
        let e = Matcher::new(MatchType::Regex, "x".repeat(1 << 20), over).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, MatcherError::RegexTooLong { .. }), "{msg}");
        assert!(msg.contains("65536"), "{msg}");
        assert!(msg.len() < 512, "{} bytes", msg.len());
    }

    #[test]
    fn compiled_size_is_bounded() {
        // Seven bytes of pattern, megabytes of Unicode program (within the crate's default).
        let e = Matcher::new(MatchType::Regex, "l", r"\w{100}").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, MatcherError::RegexTooBig { .. }), "{msg}");
        assert!(
            msg.contains(&Matcher::REGEX_SIZE_LIMIT.to_string()),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_keep_the_reason_not_the_pattern() {
        let bad = format!("({}", "a".repeat(60_000));
        let e = Matcher::new(MatchType::Regex, "l", bad).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unclosed group"), "{msg}");
        assert!(msg.len() < 1024, "{} bytes", msg.len());
    }

    #[test]
    fn a_cache_hit_shares_the_compiled_regex() {
        let c = MatcherCache::new(8);
        let (a, la) = c
            .matcher(MatchType::Regex, "a".into(), "x|y".into())
            .unwrap();
        let (b, lb) = c
            .matcher(MatchType::NotRegex, "b".into(), "x|y".into())
            .unwrap();
        assert!(la.requested && !la.hit && lb.hit, "{la:?} {lb:?}");
        assert!(Arc::ptr_eq(a.re.as_ref().unwrap(), b.re.as_ref().unwrap()));
        assert!(a.shares_regex(&b));
        // Each keeps its own kind and name.
        assert!(a.matches("x") && !b.matches("x") && b.name == "b");
        let (eq, l) = c.matcher(MatchType::Equal, "a".into(), "x".into()).unwrap();
        assert!(!l.requested && eq.matches("x"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_and_charges_large_programs_more() {
        let c = MatcherCache::new(3);
        let get = |v: &str| c.matcher(MatchType::Regex, "l".into(), v.into()).unwrap();
        let (a, _) = get("a");
        get("b");
        get("c");
        assert!(get("a").1.hit); // a is now the most recent; b the oldest
        let (_, l) = get("d");
        assert_eq!((l.evicted, l.items), (1, 3));
        assert!(!get("b").1.hit, "b was evicted");
        assert!(get("a").0.shares_regex(&a));
        // A program over one slot needs 16: more than this cache has, so it is not kept.
        let (_, l) = get(r"\w{40}");
        assert!(!l.hit && l.evicted == 0);
        assert!(!get(r"\w{40}").1.hit);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn known_values_give_the_regex_answers_and_others_still_run_it() {
        let big: String = (0..400)
            .map(|i| format!("(.*x{i}.*)"))
            .collect::<Vec<_>>()
            .join("|");
        for kind in [MatchType::Regex, MatchType::NotRegex] {
            let m = Matcher::new(kind, "l", big.as_str()).unwrap();
            assert!(m.is_costly());
            let known = m.with_known_values(["ax7b", "nothing"]);
            for v in ["ax7b", "nothing", "", "ax399", "other"] {
                assert_eq!(known.matches(v), m.matches(v), "{kind:?} {v:?}");
            }
            assert!(known.shares_regex(&m));
        }
        assert!(!m(MatchType::Regex, "a|b").is_costly());
    }

    #[test]
    fn errors_are_not_cached() {
        let c = MatcherCache::new(8);
        assert!(c.matcher(MatchType::Regex, "l".into(), "(".into()).is_err());
        assert_eq!(c.len(), 0);
    }
}
