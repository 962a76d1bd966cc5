//! StoreAPI semantics over all tenants, free of gRPC: external labels merged into series and
//! winning over same-named series labels, replica labels removed, series sorted by their final
//! label set, and matchers on external labels resolved per tenant, as a Thanos Receive does.

use crate::model::{ErrorClass, Labels, Matcher, Shown};
use crate::multitsdb::{MultiTsdb, TenantDb};
use crate::tsdb::ChunkData;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no matchers specified (excluding selector labels)")]
    NoMatchers,
    #[error("label name parameter cannot be empty")]
    EmptyLabelName,
    /// A Series call under ABORT stopped at a failing tenant. Thanos's proxy answers ABORTED
    /// with the tenant's warning whatever the cause, even for a bad request such as matchers
    /// only on external labels; UNAVAILABLE would have Queriers retry what cannot succeed.
    #[error("{0}")]
    Aborted(String),
    /// A LabelNames/LabelValues call under ABORT stopped at a failing tenant. Thanos's proxy
    /// returns the store's own error there, and its TSDB store reports storage failures as
    /// INTERNAL.
    #[error("{0}")]
    TenantFailed(String),
}

impl StoreError {
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::NoMatchers | StoreError::EmptyLabelName => ErrorClass::BadRequest,
            StoreError::Aborted(_) => ErrorClass::Aborted,
            StoreError::TenantFailed(_) => ErrorClass::Internal,
        }
    }
}

/// The warning (or, under ABORT, the error) for one tenant. The cause is [`Shown`] on its own:
/// it may carry a path or a value from the request, and it goes into a gRPC status.
fn tenant_failure(t: &TenantDb, cause: &str) -> String {
    format!("tenant {}: {}", Shown(t.tenant.as_str()), Shown(cause))
}

/// What Thanos's TSDB store answers a Series call whose matchers all name external labels.
pub const NO_MATCHERS_EXCLUDING_EXTERNAL: &str =
    "no matchers specified (excluding external labels)";

/// `shard_info` of a Series request.
#[derive(Debug, Clone)]
pub struct Shard {
    pub index: u64,
    pub total: u64,
    pub by: bool,
    pub labels: Vec<String>,
}

impl Shard {
    /// Keeps a series iff xxhash64 over its selected `name 0xff value 0xff` pairs lands on this shard.
    fn keeps(&self, labels: &Labels) -> bool {
        let mut h = xxhash_rust::xxh64::Xxh64::new(0);
        for l in labels.iter() {
            if self.labels.contains(&l.name) == self.by {
                h.update(l.name.as_bytes());
                h.update(&[0xff]);
                h.update(l.value.as_bytes());
                h.update(&[0xff]);
            }
        }
        h.digest() % self.total == self.index
    }
}

#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    pub min_time: i64,
    pub max_time: i64,
    pub matchers: Vec<Matcher>,
    pub skip_chunks: bool,
    pub without_replica_labels: Vec<String>,
    pub limit: usize,
    pub shard: Option<Shard>,
    /// ABORT strategy: a failing tenant fails the call instead of adding a warning.
    pub abort_on_error: bool,
}

#[derive(Debug, Default)]
pub struct SeriesResult {
    pub series: Vec<(Labels, Vec<ChunkData>)>,
    pub warnings: Vec<String>,
}

/// Resolves matchers on a tenant's external labels: None if one contradicts them, else the
/// matchers left for the TSDB.
fn tenant_matchers(t: &TenantDb, matchers: &[Matcher]) -> Option<Vec<Matcher>> {
    let mut rest = Vec::with_capacity(matchers.len());
    for m in matchers {
        match t.external_labels().get(&m.name) {
            Some(v) if !m.matches(v) => return None,
            Some(_) => {}
            None => rest.push(known_values(t, m)),
        }
    }
    Some(rest)
}

/// A costly regex is run here on the tenant's values of its label, before the TSDB is asked:
/// the head matches every value of a label while holding the tenant's lock, and a regex that
/// takes 0.3 ms a value then kept that tenant's writes and Info waiting for seconds. Copying
/// the values takes the lock only briefly; a value written meanwhile still runs the regex.
/// Cheap regexes are left alone: for them the copy would cost more than the matching.
fn known_values(t: &TenantDb, m: &Matcher) -> Matcher {
    if !m.is_costly() {
        return m.clone();
    }
    match t.db.label_values(&m.name, &[], i64::MIN, i64::MAX) {
        Ok(values) => m.with_known_values(values.iter().map(String::as_str)),
        // The select that follows reports the failure.
        Err(_) => m.clone(),
    }
}

pub fn series(db: &MultiTsdb, q: &SeriesQuery) -> Result<SeriesResult, StoreError> {
    if q.matchers.is_empty() {
        return Err(StoreError::NoMatchers);
    }
    let mut out = SeriesResult::default();
    for t in db.tenants() {
        let Some(rest) = tenant_matchers(&t, &q.matchers) else {
            continue;
        };
        if rest.is_empty() {
            let msg = tenant_failure(&t, NO_MATCHERS_EXCLUDING_EXTERNAL);
            if q.abort_on_error {
                return Err(StoreError::Aborted(msg));
            }
            out.warnings.push(msg);
            continue;
        }
        let selected = match t.db.select(&rest, q.min_time, q.max_time, q.skip_chunks) {
            Ok(s) => s,
            Err(e) => {
                let msg = tenant_failure(&t, &e.to_string());
                if q.abort_on_error {
                    return Err(StoreError::Aborted(msg));
                }
                out.warnings.push(msg);
                continue;
            }
        };
        let ext = t.external_labels();
        for (labels, chunks) in selected {
            let labels = labels.merged(&ext, &q.without_replica_labels);
            if q.shard
                .as_ref()
                .is_some_and(|s| s.total > 0 && !s.keeps(&labels))
            {
                continue;
            }
            out.series.push((labels, chunks));
        }
    }
    out.series.sort_by(|a, b| a.0.cmp(&b.0));
    if q.limit > 0 {
        out.series.truncate(q.limit);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct LabelQuery {
    pub start: i64,
    pub end: i64,
    pub matchers: Vec<Matcher>,
    pub without_replica_labels: Vec<String>,
    pub limit: usize,
    /// ABORT strategy: a failing tenant fails the call instead of adding a warning.
    pub abort_on_error: bool,
}

/// Sorted, distinct names or values, and a warning per tenant that could not answer.
#[derive(Debug, Default)]
pub struct LabelResult {
    pub values: Vec<String>,
    pub warnings: Vec<String>,
}

impl LabelResult {
    fn finish(mut self, limit: usize) -> Self {
        self.values.sort_unstable();
        self.values.dedup();
        if limit > 0 {
            self.values.truncate(limit);
        }
        self
    }
}

/// Whether a tenant can answer for a window ending at `end`: Thanos's proxy asks a store only
/// if the window reaches its min time, which an empty tenant announces as `i64::MAX` (see
/// [`info`]). Without this, an empty tenant's external labels would answer every label query.
fn in_window(t: &TenantDb, end: i64) -> bool {
    end >= t.db.time_range().map_or(i64::MAX, |(lo, _)| lo)
}

pub fn label_names(db: &MultiTsdb, q: &LabelQuery) -> Result<LabelResult, StoreError> {
    let mut out = LabelResult::default();
    for t in db.tenants().iter().filter(|t| in_window(t, q.end)) {
        let Some(rest) = tenant_matchers(t, &q.matchers) else {
            continue;
        };
        let found = match t.db.label_names(&rest, q.start, q.end) {
            Ok(f) => f,
            Err(e) => {
                let msg = tenant_failure(t, &e.to_string());
                if q.abort_on_error {
                    return Err(StoreError::TenantFailed(msg));
                }
                out.warnings.push(msg);
                continue;
            }
        };
        if found.is_empty() {
            continue;
        }
        out.values.extend(found);
        let ext = t.external_labels();
        let names = ext
            .iter()
            .filter(|l| !q.without_replica_labels.contains(&l.name));
        out.values.extend(names.map(|l| l.name.clone()));
    }
    Ok(out.finish(q.limit))
}

pub fn label_values(db: &MultiTsdb, name: &str, q: &LabelQuery) -> Result<LabelResult, StoreError> {
    if name.is_empty() {
        return Err(StoreError::EmptyLabelName);
    }
    let mut out = LabelResult::default();
    if q.without_replica_labels.iter().any(|w| w == name) {
        return Ok(out);
    }
    for t in db.tenants().iter().filter(|t| in_window(t, q.end)) {
        let Some(rest) = tenant_matchers(t, &q.matchers) else {
            continue;
        };
        let found = match t.external_labels().get(name) {
            Some(v) if rest.is_empty() => Ok(vec![v.to_string()]),
            Some(v) => t.db.select(&rest, q.start, q.end, true).map(|s| {
                if s.is_empty() {
                    vec![]
                } else {
                    vec![v.to_string()]
                }
            }),
            None => t.db.label_values(name, &rest, q.start, q.end),
        };
        match found {
            Ok(f) => out.values.extend(f),
            Err(e) => {
                let msg = tenant_failure(t, &e.to_string());
                if q.abort_on_error {
                    return Err(StoreError::TenantFailed(msg));
                }
                out.warnings.push(msg);
            }
        }
    }
    Ok(out.finish(q.limit))
}

/// What Info announces: one label set and time range per tenant.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub labels: Labels,
    pub min_time: i64,
}

pub fn info(db: &MultiTsdb) -> Vec<TenantInfo> {
    db.tenants()
        .iter()
        .map(|t| TenantInfo {
            labels: t.external_labels(),
            min_time: t.db.time_range().map_or(i64::MAX, |(lo, _)| lo),
        })
        .collect()
}
