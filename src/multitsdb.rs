//! One TSDB per tenant under `--tsdb.path`, opened lazily on a tenant's first write, and every
//! existing tenant directory replayed at start, as Thanos's multitsdb does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::model::{Label, Labels, TenantId};
use crate::remote_write::WriteBatch;
use crate::telemetry::{self, metrics};
use crate::tsdb::{AppendResult, HeadSnapshot, Tsdb, TsdbError, TsdbOptions};

#[derive(Debug, thiserror::Error)]
pub enum MultiTsdbError {
    #[error("tenant {tenant}: {source}")]
    Tenant { tenant: TenantId, source: TsdbError },
    #[error("list tenants in {dir}: {source}")]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("shutting down")]
    Closed,
    /// A new tenant past `--tsdb.max-tenants`: another node (or a later retry, once idle
    /// tenants are pruned) may take it.
    #[error("tenant {tenant}: this node already holds its limit of {limit} tenants (--tsdb.max-tenants)")]
    TenantLimit { tenant: TenantId, limit: usize },
    /// Another process holds `--tsdb.path`; two writers would interleave in one WAL.
    #[error("{path} is locked by another process ({holder}); stop it, or give this one another --tsdb.path")]
    Locked { path: PathBuf, holder: String },
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A router-only node (no `--receive.local-endpoint`) keeps no tenant: nothing may be
    /// written locally.
    #[error("tenant {tenant}: this node routes only and stores no data")]
    RouterOnly { tenant: TenantId },
}

impl MultiTsdbError {
    /// Reports whether the failure only means the database is shutting down (retry elsewhere).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            MultiTsdbError::Closed
                | MultiTsdbError::Tenant {
                    source: TsdbError::Wal(crate::tsdb::wal::WalError::Closed),
                    ..
                }
        )
    }

    /// Whether the failure is a passing lack of resources that a retry may not meet: shutting
    /// down, the tenant limit, or the process or system out of file descriptors.
    pub fn is_unavailable(&self) -> bool {
        if self.is_closed() || matches!(self, MultiTsdbError::TenantLimit { .. }) {
            return true;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(EMFILE | ENFILE)) {
                    return true;
                }
            }
            cause = e.source();
        }
        false
    }
}

/// errno values of Linux (and every other Unix Wharf builds on) for "too many open files" in
/// the process and in the system.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

#[derive(Debug, Clone)]
pub struct Options {
    /// `--tsdb.path`.
    pub path: PathBuf,
    pub tsdb: TsdbOptions,
    /// `--label` external labels, applied to every tenant.
    pub external_labels: Labels,
    /// `--receive.tenant-label-name`.
    pub tenant_label: String,
    /// `--receive.default-tenant-id`, whose directory exists from the start.
    pub default_tenant: TenantId,
    /// `--tsdb.retention` in ms; 0 keeps blocks forever.
    pub retention_ms: i64,
    /// Object storage is configured: retention deletes only blocks already uploaded.
    pub keep_blocks: bool,
    /// `--tsdb.no-lockfile`: do not lock `path` against a second process.
    pub no_lockfile: bool,
    /// `--tsdb.max-tenants`: tenants this node creates on write; 0 is no limit. Tenants found
    /// on disk at start are always opened.
    pub max_tenants: usize,
    /// WAL segment files held open at once; past it the least recently written tenants'
    /// files are closed (and reopened on their next write).
    pub max_open_wals: usize,
}

impl Options {
    pub fn validate(&self) -> Result<(), TsdbError> {
        if self.tenant_label.is_empty() {
            return Err(TsdbError::Config(
                "tenant label name must not be empty".into(),
            ));
        }
        if self.max_open_wals == 0 {
            return Err(TsdbError::Config(
                "at least one WAL file must be allowed open".into(),
            ));
        }
        self.tsdb.validate()
    }
}

/// A tenant's database with the external labels its data carries.
#[derive(Debug)]
pub struct TenantDb {
    pub tenant: TenantId,
    /// Changes when the hashring's `external_labels` for the tenant do.
    labels: RwLock<Labels>,
    pub db: Tsdb,
    /// [`MultiTsdb::tick`] at the tenant's last write: which WAL files to close first.
    last_write: AtomicU64,
}

impl TenantDb {
    /// The labels new blocks and StoreAPI answers carry for this tenant.
    pub fn external_labels(&self) -> Labels {
        self.labels.read().clone()
    }
}

#[derive(Debug)]
pub struct MultiTsdb {
    opts: Options,
    /// Per tenant, the `external_labels` of the hashring that lists it.
    ring_labels: RwLock<HashMap<String, BTreeMap<String, String>>>,
    tenants: RwLock<BTreeMap<TenantId, Arc<TenantDb>>>,
    closed: RwLock<bool>,
    /// Counts writes, to order tenants by recency without reading the clock.
    tick: AtomicU64,
    /// One pass at a time closes WAL files, so that two do not both close the same ones.
    closing_wals: Mutex<()>,
    /// Whether tenants are stored here; not on a router-only node.
    stores: bool,
    /// Holds the `lock` file's lock on `path` until [`MultiTsdb::close`].
    lock: Mutex<Option<std::fs::File>>,
}

/// The name of the lock file in `--tsdb.path`, as Prometheus names its own.
const LOCK_FILE: &str = "lock";

/// Takes an exclusive lock on `<dir>/lock` (flock: the kernel drops it when the process dies,
/// so a kill -9 leaves nothing to clean up) and writes this process's id into it; a held lock
/// fails, naming the holder the file names.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, MultiTsdbError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let err = |source| MultiTsdbError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = Vec::new();
            // Bounded: the file is another process's and could be anything.
            let _ = (&file).take(256).read_to_end(&mut holder);
            let holder = String::from_utf8_lossy(&holder);
            let holder = crate::model::Shown(holder.trim()).to_string();
            return Err(MultiTsdbError::Locked {
                path,
                holder: if holder.is_empty() {
                    "it did not say which".into()
                } else {
                    holder
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    write!(file, "pid {}", std::process::id()).map_err(err)?;
    Ok(file)
}

impl MultiTsdb {
    /// The database of a router-only node: no tenant, no directory, nothing on disk (the
    /// kube-thanos router pod has a read-only root and no volume). Its StoreAPI announces
    /// nothing and a local write is an error.
    pub fn router_only(opts: Options) -> Self {
        Self::new(opts, false, None)
    }

    fn new(opts: Options, stores: bool, lock: Option<std::fs::File>) -> Self {
        Self {
            opts,
            ring_labels: RwLock::new(HashMap::new()),
            tenants: RwLock::new(BTreeMap::new()),
            closed: RwLock::new(false),
            tick: AtomicU64::new(0),
            closing_wals: Mutex::new(()),
            stores,
            lock: Mutex::new(lock),
        }
    }

    /// Locks `--tsdb.path` (unless `--tsdb.no-lockfile`), then opens every tenant directory
    /// (replaying WALs) and the default tenant. Blocking.
    pub fn open(opts: Options) -> Result<Self, MultiTsdbError> {
        let dir = opts.path.clone();
        std::fs::create_dir_all(&dir).map_err(|source| MultiTsdbError::List {
            dir: dir.clone(),
            source,
        })?;
        let lock = if opts.no_lockfile {
            None
        } else {
            Some(lock_dir(&dir)?)
        };
        let this = Self::new(opts, true, lock);
        let entries = std::fs::read_dir(&dir).map_err(|source| MultiTsdbError::List {
            dir: dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for e in entries {
            let e = e.map_err(|source| MultiTsdbError::List {
                dir: dir.clone(),
                source,
            })?;
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            // TenantId refuses at write every name skipped here, so no written tenant is lost.
            match TenantId::new(&name) {
                Ok(t) => names.push(t),
                Err(why) => {
                    tracing::warn!(dir = %e.path().display(), %why, "skipping directory that is not a tenant")
                }
            }
        }
        names.push(this.opts.default_tenant.clone());
        for t in names {
            // Not bounded per tenant as a write is (a scan of all tenants each): a tenant past
            // the bound closes its file at once.
            let db = this.open_tenant(&t, false)?;
            if this.num_tenants() > this.opts.max_open_wals {
                db.db
                    .release_wal()
                    .map_err(|source| MultiTsdbError::Tenant { tenant: t, source })?;
            }
        }
        if let Some(limit) =
            Some(this.opts.max_tenants).filter(|&l| l > 0 && this.num_tenants() > l)
        {
            tracing::warn!(
                tenants = this.num_tenants(),
                limit,
                "more tenants on disk than --tsdb.max-tenants; all are open, new ones are refused"
            );
        }
        Ok(this)
    }

    /// External labels of a tenant: its hashring's `external_labels`, then the `--label`
    /// values and the tenant label, which win on a name clash.
    pub fn external_labels(&self, tenant: &TenantId) -> Labels {
        let mut pairs: Vec<Label> = self
            .ring_labels
            .read()
            .get(tenant.as_str())
            .into_iter()
            .flatten()
            .map(|(n, v)| Label::new(n.clone(), v.clone()))
            .collect();
        pairs.extend(self.opts.external_labels.iter().cloned());
        pairs.push(Label::new(self.opts.tenant_label.clone(), tenant.as_str()));
        Labels::from_pairs(pairs.into_iter().map(|l| (l.name, l.value)))
    }

    /// Sets the hashrings' per-tenant `external_labels`; open tenants take them at once (their
    /// next block and StoreAPI answers carry them).
    pub fn set_ring_labels(&self, labels: HashMap<String, BTreeMap<String, String>>) {
        *self.ring_labels.write() = labels;
        for t in self.tenants() {
            *t.labels.write() = self.external_labels(&t.tenant);
        }
    }

    /// Returns the tenant's database, creating it on first use. Blocking (may replay a WAL).
    pub fn get_or_open(&self, tenant: &TenantId) -> Result<Arc<TenantDb>, MultiTsdbError> {
        self.open_tenant(tenant, true)
    }

    /// Tenants open now.
    pub fn num_tenants(&self) -> usize {
        self.tenants.read().len()
    }

    fn open_tenant(&self, tenant: &TenantId, new: bool) -> Result<Arc<TenantDb>, MultiTsdbError> {
        if let Some(db) = self.tenants.read().get(tenant) {
            return Ok(db.clone());
        }
        if !self.stores {
            return Err(MultiTsdbError::RouterOnly {
                tenant: tenant.clone(),
            });
        }
        let mut tenants = self.tenants.write();
        if *self.closed.read() {
            return Err(MultiTsdbError::Closed);
        }
        if let Some(db) = tenants.get(tenant) {
            return Ok(db.clone());
        }
        let limit = self.opts.max_tenants;
        if new && limit > 0 && tenants.len() >= limit {
            return Err(MultiTsdbError::TenantLimit {
                tenant: tenant.clone(),
                limit,
            });
        }
        let dir = self.opts.path.join(tenant.as_str());
        let (db, stats) =
            Tsdb::open(&dir, &self.opts.tsdb).map_err(|source| MultiTsdbError::Tenant {
                tenant: tenant.clone(),
                source,
            })?;
        let m = metrics();
        let tl = telemetry::tenant(tenant.as_str());
        m.replay_duration
            .get_or_create(&tl)
            .set(stats.duration.as_secs_f64());
        if let Some(torn) = &stats.wal.torn {
            m.wal_corruptions.get_or_create(&tl).inc();
            tracing::warn!(tenant = %tenant, segment = torn.segment, offset = torn.offset, reason = %torn.reason, "wal replay truncated a torn tail");
        }
        tracing::info!(tenant = %tenant, series = stats.series, samples = stats.samples, segments = stats.wal.segments,
            unknown_refs = stats.unknown_refs, duration = ?stats.duration, "tenant tsdb opened");
        let entry = Arc::new(TenantDb {
            tenant: tenant.clone(),
            labels: RwLock::new(self.external_labels(tenant)),
            db,
            last_write: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        });
        update_head_metrics(tenant, &entry.db.snapshot());
        metrics()
            .blocks_loaded
            .get_or_create(&tl)
            .set(entry.db.num_blocks() as i64);
        tenants.insert(tenant.clone(), entry.clone());
        drop(tenants);
        if new {
            self.bound_open_wals(Some(tenant));
        }
        Ok(entry)
    }

    /// Closes the WAL files of the least recently written tenants until at most
    /// `max_open_wals` are open, never `keep`'s (the tenant being written). Each tenant
    /// otherwise holds its segment file for good, and descriptors, not memory, would bound how
    /// many tenants a node can hold. Called when a WAL may have opened its file: a tenant
    /// opened, a released WAL written again, a compaction pass.
    fn bound_open_wals(&self, keep: Option<&TenantId>) {
        let _one_pass = self.closing_wals.lock();
        let mut open: Vec<(u64, Arc<TenantDb>)> = self
            .tenants()
            .into_iter()
            .filter(|t| t.db.wal_is_open())
            .map(|t| (t.last_write.load(Ordering::Relaxed), t))
            .collect();
        let Some(excess) = open.len().checked_sub(self.opts.max_open_wals) else {
            return;
        };
        open.retain(|(_, t)| Some(&t.tenant) != keep);
        open.sort_unstable_by_key(|(at, _)| *at);
        for (_, t) in open.into_iter().take(excess) {
            if let Err(e) = t.db.release_wal() {
                metrics()
                    .wal_writes_failed
                    .get_or_create(&telemetry::tenant(t.tenant.as_str()))
                    .inc();
                tracing::warn!(tenant = %t.tenant, error = %e, "closing an idle tenant's WAL file failed");
            }
        }
        metrics().wal_files_closed.inc_by(excess as u64);
    }

    /// Appends a batch to a tenant, opening it if needed. Blocking.
    pub fn append(
        &self,
        tenant: &TenantId,
        batch: &WriteBatch<'_>,
    ) -> Result<AppendResult, MultiTsdbError> {
        let t = self.get_or_open(tenant)?;
        t.last_write
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let was_open = t.db.wal_is_open();
        let res = t.db.append(batch);
        if !was_open {
            self.bound_open_wals(Some(tenant));
        }
        let res = res.map_err(|source| {
            metrics()
                .wal_writes_failed
                .get_or_create(&telemetry::tenant(tenant.as_str()))
                .inc();
            MultiTsdbError::Tenant {
                tenant: tenant.clone(),
                source,
            }
        })?;
        let m = metrics();
        let tl = telemetry::tenant(tenant.as_str());
        m.head_samples_appended
            .get_or_create(&telemetry::float_type(tenant.as_str()))
            .inc_by(res.appended);
        m.head_series_created
            .get_or_create(&tl)
            .inc_by(res.new_series);
        if res.rejected.out_of_order > 0 {
            m.out_of_order_samples
                .get_or_create(&telemetry::float_type(tenant.as_str()))
                .inc_by(res.rejected.out_of_order);
        }
        if res.rejected.out_of_bounds > 0 {
            m.out_of_bound_samples
                .get_or_create(&telemetry::float_type(tenant.as_str()))
                .inc_by(res.rejected.out_of_bounds);
        }
        if res.rejected.too_far_in_future > 0 {
            m.too_far_in_future_samples
                .get_or_create(&tl)
                .inc_by(res.rejected.too_far_in_future);
        }
        if res.rejected.duplicate > 0 {
            m.duplicate_samples
                .get_or_create(&tl)
                .inc_by(res.rejected.duplicate);
        }
        if res.new_series > 0 || res.appended > 0 {
            update_head_metrics(tenant, &res.head);
        }
        Ok(res)
    }

    /// Cuts due blocks and applies retention for every tenant; one log line per block. Returns
    /// how many blocks were cut. Blocking.
    pub fn compact_all(&self) -> usize {
        let m = metrics();
        let mut cut = 0;
        for t in self.tenants() {
            let tl = telemetry::tenant(t.tenant.as_str());
            cut += record_cut(&t, t.db.compact(&t.external_labels()), "head compaction");
            // With object storage, a block leaves the disk only once the bucket has it.
            let uploaded = self
                .opts
                .keep_blocks
                .then(|| crate::shipper::read_uploaded(t.db.dir()));
            let deletable = |ulid: &str| uploaded.as_ref().is_none_or(|u| u.contains(ulid));
            match t
                .db
                .apply_retention(self.opts.retention_ms, crate::tsdb::now_ms(), &deletable)
            {
                Ok(deleted) => {
                    for ulid in deleted {
                        m.blocks_deleted.get_or_create(&tl).inc();
                        tracing::info!(tenant = %t.tenant, %ulid, "block deleted by retention");
                    }
                }
                Err(e) => {
                    tracing::error!(tenant = %t.tenant, error = %e, "applying retention failed")
                }
            }
            m.blocks_loaded
                .get_or_create(&tl)
                .set(t.db.num_blocks() as i64);
            update_head_metrics(&t.tenant, &t.db.snapshot());
        }
        // Cutting a block checkpoints the WAL, which reopens a closed segment file.
        self.bound_open_wals(None);
        cut
    }

    /// Cuts every tenant's whole head into blocks (see `Tsdb::flush`), for the last upload
    /// before the process exits. Returns how many blocks were cut. Blocking.
    pub fn flush_all(&self) -> usize {
        self.tenants()
            .iter()
            .map(|t| record_cut(t, t.db.flush(&t.external_labels()), "head flush"))
            .sum()
    }

    /// Every open tenant, in tenant order.
    pub fn tenants(&self) -> Vec<Arc<TenantDb>> {
        self.tenants.read().values().cloned().collect()
    }

    /// Flushes and closes every WAL; later writes fail. Blocking.
    pub fn close(&self) {
        *self.closed.write() = true;
        for t in self.tenants() {
            match t.db.close() {
                Ok(()) => tracing::info!(tenant = %t.tenant, "tenant tsdb closed"),
                Err(e) => tracing::error!(tenant = %t.tenant, error = %e, "closing tenant tsdb"),
            }
        }
        // Every WAL is closed: another process may take the path now.
        self.lock.lock().take();
    }
}

/// Counts and logs the blocks one compaction or flush of a tenant cut; returns how many.
fn record_cut(
    t: &TenantDb,
    done: Result<Vec<crate::tsdb::CompactedBlock>, TsdbError>,
    what: &'static str,
) -> usize {
    let m = metrics();
    let tl = telemetry::tenant(t.tenant.as_str());
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            m.compactions_failed.get_or_create(&tl).inc();
            tracing::error!(tenant = %t.tenant, error = %e, "{what} failed");
            return 0;
        }
    };
    let mut cut = 0;
    for c in done {
        m.head_truncations.get_or_create(&tl).inc();
        let Some(meta) = c.meta else {
            tracing::info!(tenant = %t.tenant, min_time = c.min_time, max_time = c.max_time, "head range had no samples; no block cut");
            continue;
        };
        m.compactions.get_or_create(&tl).inc();
        cut += 1;
        m.compaction_duration
            .get_or_create(&tl)
            .observe(c.duration.as_secs_f64());
        tracing::info!(tenant = %t.tenant, ulid = %meta.ulid, min_time = meta.min_time, max_time = meta.max_time,
            series = meta.stats.num_series, samples = meta.stats.num_samples, chunks = meta.stats.num_chunks,
            bytes = block_bytes(&t.db.dir().join(&meta.ulid)), duration = ?c.duration, "block cut from head ({what})");
    }
    cut
}

fn block_bytes(dir: &std::path::Path) -> u64 {
    let files = ["index", "meta.json", "tombstones"]
        .iter()
        .map(|f| dir.join(f));
    let chunks = std::fs::read_dir(dir.join("chunks"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    files
        .chain(chunks)
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn update_head_metrics(tenant: &TenantId, h: &HeadSnapshot) {
    let m = metrics();
    let tl = telemetry::tenant(tenant.as_str());
    m.head_series.get_or_create(&tl).set(h.stats.series as i64);
    m.head_chunks
        .get_or_create(&tl)
        .set(h.stats.chunks_created as i64);
    m.wal_segment_current
        .get_or_create(&tl)
        .set(i64::from(h.wal_segment));
    if let Some((lo, hi)) = h.time_range {
        m.head_min_time.get_or_create(&tl).set(lo);
        m.head_max_time.get_or_create(&tl).set(hi);
    }
}

#[cfg(test)]
mod tests;
