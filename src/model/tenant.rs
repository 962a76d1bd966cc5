use std::fmt;
use std::sync::Arc;

/// A tenant name, validated to be exactly one path element so it can name a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenant {0:?} is not a single path element")]
    NotPathElement(String),
}

impl TenantId {
    /// Accepts what Thanos accepts (`tenant == path.Base(tenant)`), except `.` and `..`, which
    /// Thanos lets through but which would alias the data directory or its parent.
    pub fn new(s: &str) -> Result<Self, TenantError> {
        let bad = s.is_empty() || s == "." || s == ".." || s.contains(['/', '\0']);
        if bad {
            return Err(TenantError::NotPathElement(s.to_string()));
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_path_elements_are_tenants() {
        for ok in ["default-tenant", "team_a", "a.b", "ü"] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/a", "a/", "a\0b"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }
}
