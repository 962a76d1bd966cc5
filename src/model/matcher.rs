use regex::Regex;

/// How a matcher compares a label value (`=`, `!=`, `=~`, `!~`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regex {value:?} in matcher on {name:?}: {reason}")]
    BadRegex {
        name: String,
        value: String,
        reason: String,
    },
}

/// A label matcher with Prometheus semantics: a missing label has the value `""`, and regexes
/// are fully anchored with `.` matching newlines, as in Prometheus 3.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub kind: MatchType,
    pub name: String,
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    pub fn new(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let (name, value) = (name.into(), value.into());
        let re = match kind {
            MatchType::Regex | MatchType::NotRegex => {
                Some(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    MatcherError::BadRegex {
                        name: name.clone(),
                        value: value.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            MatchType::Equal | MatchType::NotEqual => None,
        };
        Ok(Self {
            kind,
            name,
            value,
            re,
        })
    }

    /// Reports whether a label value (`""` when the label is absent) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
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
}
