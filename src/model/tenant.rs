use std::fmt;
use std::sync::Arc;

use super::Shown;

/// A tenant name, validated to be exactly one path element so it can name a directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// Longest tenant name: a tenant is a directory, and file systems refuse longer names
/// (`NAME_MAX`), which would otherwise surface as a 500 on the first write.
pub const MAX_TENANT_BYTES: usize = 255;

/// Names of the data directory that are not tenants. The scan at start skips them, so a tenant
/// by that name would be written and then vanish at the next restart.
const RESERVED: &[&str] = &["lost+found"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenant {0:?} is not a single path element")]
    NotPathElement(String),
    #[error("tenant {0:?} is longer than {MAX_TENANT_BYTES} bytes")]
    TooLong(String),
    #[error("tenant {0:?} is a name the data directory reserves")]
    Reserved(String),
}

impl TenantId {
    /// Accepts what Thanos accepts (`tenant == path.Base(tenant)`), except `.` and `..`, which
    /// Thanos lets through but which would alias the data directory or its parent, names longer
    /// than a directory name may be, and names the data directory reserves.
    pub fn new(s: &str) -> Result<Self, TenantError> {
        let shown = || format!("{}", Shown(s));
        if s.len() > MAX_TENANT_BYTES {
            return Err(TenantError::TooLong(shown()));
        }
        let bad = s.is_empty() || s == "." || s == ".." || s.contains(['/', '\0']);
        if bad {
            return Err(TenantError::NotPathElement(shown()));
        }
        if RESERVED.contains(&s) {
            return Err(TenantError::Reserved(shown()));
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
        for ok in ["default-tenant", "team_a", "a.b", "ü", "lost+found2"] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/a", "a/", "a\0b"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reserved_and_overlong_names_are_refused_with_a_bounded_message() {
        assert!(matches!(
            TenantId::new("lost+found"),
            Err(TenantError::Reserved(_))
        ));
        assert!(TenantId::new(&"a".repeat(MAX_TENANT_BYTES)).is_ok());
        let long = "a".repeat(400 << 10);
        let e = TenantId::new(&long).unwrap_err();
        assert!(matches!(e, TenantError::TooLong(_)));
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
    }
}
