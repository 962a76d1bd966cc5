use std::cmp::Ordering;
use std::fmt;

/// One label pair. Owned strings: label sets only leave the head on the (cold) query path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A label set sorted by name with unique names, the invariant Prometheus relies on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from pairs in any order; later duplicates replace earlier ones.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut v: Vec<Label> = pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        // Keep the last of equal names so callers can layer overrides by appending.
        let mut out: Vec<Label> = Vec::with_capacity(v.len());
        for l in v {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        Self(out)
    }

    /// Wraps labels already sorted by unique name.
    pub fn from_sorted(v: Vec<Label>) -> Self {
        debug_assert!(v.windows(2).all(|w| w[0].name < w[1].name));
        Self(v)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// Returns these labels overlaid with `overrides` (which win on equal names), minus every
    /// name in `drop`. This is how a store merges external labels into a series.
    pub fn merged(&self, overrides: &Labels, drop: &[String]) -> Labels {
        let mut out = Vec::with_capacity(self.len() + overrides.len());
        let (mut a, mut b) = (self.0.iter().peekable(), overrides.0.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.name.cmp(&y.name) {
                    Ordering::Less => a.next(),
                    Ordering::Greater => b.next(),
                    Ordering::Equal => {
                        a.next();
                        b.next()
                    }
                },
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some(l) = next {
                if !drop.contains(&l.name) {
                    out.push(l.clone());
                }
            }
        }
        Labels(out)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_label_sets(
            self.0
                .iter()
                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
            other
                .0
                .iter()
                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
        )
    }
}

/// Orders label sets like Prometheus `labels.Compare`: pair by pair, name then value, byte-wise;
/// a set that is a prefix of another sorts first.
pub fn compare_label_sets<'a, 'b>(
    a: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    b: impl IntoIterator<Item = (&'b [u8], &'b [u8])>,
) -> Ordering {
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((an, av)), Some((bn, bv))) => {
                let c = an.cmp(bn).then_with(|| av.cmp(bv));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(p: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(p.iter().copied())
    }

    #[test]
    fn compare_is_pairwise_and_prefix_first() {
        assert!(ls(&[("a", "1")]) < ls(&[("a", "1"), ("b", "1")]));
        assert!(ls(&[("a", "2")]) > ls(&[("a", "1"), ("b", "1")]));
        assert!(ls(&[("a", "1"), ("c", "1")]) > ls(&[("a", "1"), ("b", "9")]));
        assert_eq!(
            ls(&[("i", "a"), ("n", "1")]).cmp(&ls(&[("n", "1")])),
            Ordering::Less
        );
    }

    #[test]
    fn merged_lets_overrides_win_and_drops_names() {
        let series = ls(&[("foo", "bar"), ("region", "somewhere"), ("replica", "a")]);
        let ext = ls(&[("region", "eu-west"), ("replica", "r1")]);
        let m = series.merged(&ext, &["replica".to_string()]);
        assert_eq!(m, ls(&[("foo", "bar"), ("region", "eu-west")]));
    }
}
