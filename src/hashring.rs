//! Thanos-compatible hashrings: the hashrings JSON, tenant → hashring matching, and series
//! placement by hashmod or ketama (with availability-zone spread), bit-identical to Thanos so
//! that a mixed fleet agrees on where every series lives (`tests/hashring_golden.rs` checks the
//! vectors computed with Thanos's own code).

mod glob;
mod gorand;
mod md5;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use serde::Deserialize;

/// Ring points per endpoint in a ketama ring.
const SECTIONS_PER_NODE: u32 = 1000;

/// Thanos's answer when no hashring takes a tenant.
const NO_MATCH: &str = "no matching hashring to handle tenant";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HashringError {
    #[error("parse hashrings: {0}")]
    Parse(String),
    #[error("hashring {ring:?}: {reason}")]
    Invalid { ring: String, reason: String },
    #[error("{NO_MATCH} {0:?}")]
    NoMatch(String),
    #[error("insufficient nodes; have {have}, want {want}")]
    InsufficientNodes { have: usize, want: usize },
}

/// Placement algorithm of a hashring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    Hashmod,
    Ketama,
}

impl std::str::FromStr for Algorithm {
    type Err = HashringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hashmod" => Ok(Algorithm::Hashmod),
            "ketama" => Ok(Algorithm::Ketama),
            other => Err(HashringError::Parse(format!(
                "unknown hashring algorithm {other:?}"
            ))),
        }
    }
}

/// One node of a hashring, as the hashrings file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// gRPC address (`host:port`): where forwarded writes go.
    pub address: String,
    /// Availability zone; empty when none is given.
    pub az: String,
    /// Cap'n Proto address, `<host>:19391` unless given: a local endpoint may be named by it.
    pub capnproto_address: String,
}

// Every key is checked, unlike Thanos's decoder: a misspelt key ("tenant" for "tenants") would
// silently make a catch-all ring.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Object(RawEndpointObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointObject {
    address: String,
    #[serde(default)]
    az: String,
    #[serde(default)]
    capnproto_address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRing {
    #[serde(default)]
    hashring: String,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    tenant_matcher_type: String,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    algorithm: String,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    shuffle_sharding_config: Option<RawShuffle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShuffle {
    #[serde(default)]
    shard_size: usize,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
    #[serde(default)]
    zone_awareness_disabled: bool,
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

fn default_cache_size() -> usize {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    #[serde(default)]
    shard_size: usize,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    tenant_matcher_type: String,
}

/// Hashes a series for placement: XXH64 (seed 0) over the tenant, `0xff`, then each label's
/// name, `0xff`, value, `0xff`, in arrival order (not re-sorted), as Thanos does.
pub fn series_hash<'a>(tenant: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    SeriesHasher::default().hash(
        tenant,
        labels
            .into_iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    )
}

/// [`series_hash`] for many series, with one reused buffer: hashing the joined bytes at once is
/// several times faster than feeding the hasher ~40 short pieces per series.
#[derive(Debug, Default)]
pub struct SeriesHasher {
    buf: Vec<u8>,
}

impl SeriesHasher {
    /// Label bytes as they arrived (a router does not check them for UTF-8).
    pub fn hash<'a>(
        &mut self,
        tenant: &str,
        labels: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> u64 {
        self.start(tenant);
        for (n, v) in labels {
            self.label(n, v);
        }
        self.finish()
    }

    /// Begins a series: [`label`](Self::label) each label in order, then [`finish`](Self::finish).
    pub fn start(&mut self, tenant: &str) {
        self.buf.clear();
        self.buf.extend_from_slice(tenant.as_bytes());
        self.buf.push(0xff);
    }

    pub fn label(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        self.buf.push(0xff);
        self.buf.extend_from_slice(value);
        self.buf.push(0xff);
    }

    pub fn finish(&self) -> u64 {
        xxhash_rust::xxh64::xxh64(&self.buf, 0)
    }
}

#[derive(Debug)]
enum Placer {
    /// Endpoints sorted by address; replica n of hash h is `[(h + n) mod N]`.
    Hashmod(Vec<Endpoint>),
    Ketama(Ketama),
}

/// Ring points sorted by hash, each with the endpoints of its RF replicas precomputed.
#[derive(Debug)]
struct Ketama {
    endpoints: Vec<Endpoint>,
    hashes: Vec<u64>,
    /// `rf` endpoint indexes per point.
    replicas: Vec<u32>,
    rf: usize,
}

impl Ketama {
    fn new(ring: &str, endpoints: Vec<Endpoint>, rf: usize) -> Result<Self, HashringError> {
        let invalid = |reason: String| HashringError::Invalid {
            ring: ring.to_string(),
            reason,
        };
        if endpoints.len() < rf {
            return Err(invalid(
                "ketama: amount of endpoints needs to be larger than replication factor".into(),
            ));
        }
        check_zone_layout(&endpoints, rf).map_err(invalid)?;
        let points = ring_points(&endpoints, 0..endpoints.len());
        let zones: BTreeSet<&str> = endpoints.iter().map(|e| e.az.as_str()).collect();
        let zone_of: Vec<usize> = endpoints
            .iter()
            .map(|e| zones.iter().position(|z| *z == e.az).unwrap_or(0))
            .collect();
        let mut replicas = Vec::with_capacity(points.len() * rf);
        let mut chosen: Vec<u32> = Vec::with_capacity(rf);
        let mut spread = vec![0usize; zones.len()];
        for start in 0..points.len() {
            chosen.clear();
            spread.iter_mut().for_each(|s| *s = 0);
            let mut j = start;
            // The layout check above guarantees the walk ends; this bound only guards it.
            let mut steps = 0usize;
            while chosen.len() < rf {
                let ep = points[j].1;
                j = (j + 1) % points.len();
                steps += 1;
                if steps > points.len() * (rf + 1) {
                    return Err(invalid("zones cannot hold the replication factor".into()));
                }
                if chosen.contains(&ep) {
                    continue;
                }
                let z = zone_of[ep as usize];
                let least = spread.iter().copied().min().unwrap_or(0);
                // Spread replicas over zones before doubling up inside one.
                if zones.len() > 1 && spread[z] > 0 && spread[z] > least {
                    continue;
                }
                chosen.push(ep);
                spread[z] += 1;
            }
            replicas.extend_from_slice(&chosen);
        }
        Ok(Self {
            endpoints,
            hashes: points.iter().map(|p| p.0).collect(),
            replicas,
            rf,
        })
    }

    fn get_n(&self, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        if n >= self.endpoints.len() || n >= self.rf {
            return Err(HashringError::InsufficientNodes {
                have: self.endpoints.len().min(self.rf),
                want: n + 1,
            });
        }
        let point = self.hashes.partition_point(|&h| h < hash) % self.hashes.len();
        let idx = self.replicas[point * self.rf + n];
        Ok(&self.endpoints[idx as usize])
    }
}

/// The ketama points of the given endpoints, sorted: `SECTIONS_PER_NODE` per endpoint at
/// `xxh64(address + ":" + i)`.
fn ring_points(endpoints: &[Endpoint], which: impl Iterator<Item = usize>) -> Vec<(u64, u32)> {
    let mut points = Vec::new();
    for idx in which {
        let ep = &endpoints[idx];
        for i in 1..=SECTIONS_PER_NODE {
            let key = format!("{}:{i}", ep.address);
            points.push((xxhash_rust::xxh64::xxh64(key.as_bytes(), 0), idx as u32));
        }
    }
    // Ties would need two addresses with a colliding 64-bit point; order them by address so
    // that configuration order never matters.
    points.sort_by(|a, b| {
        (a.0, &endpoints[a.1 as usize].address).cmp(&(b.0, &endpoints[b.1 as usize].address))
    });
    points
}

/// The seed Thanos derives for a tenant's draw from one zone: the first 8 bytes of
/// MD5(tenant) (no zone) or MD5(tenant, 0x00, zone), big-endian.
pub fn shuffle_seed(tenant: &str, zone: &str) -> i64 {
    let mut input = tenant.as_bytes().to_vec();
    if !zone.is_empty() {
        input.push(0);
        input.extend_from_slice(zone.as_bytes());
    }
    let d = md5::digest(&input);
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The first value Go's `rand.New(rand.NewSource(seed)).Uint64()` returns.
pub fn go_rand_first(seed: i64) -> u64 {
    gorand::GoRand::new(seed).next_u64()
}

/// Shuffle sharding of one ketama hashring: each tenant writes to its own subset of nodes.
#[derive(Debug)]
struct Shuffle {
    shard_size: usize,
    zone_aware: bool,
    overrides: Vec<(usize, Vec<String>, bool)>,
    /// Ring points per zone (one zone "" when zone awareness is off), by endpoint index.
    zone_points: BTreeMap<String, Vec<(u64, u32)>>,
    rf: usize,
    cache_size: usize,
    /// tenant → its shard's ring (endpoint indexes into the hashring's list).
    cache: Mutex<HashMap<String, Arc<SubRing>>>,
}

#[derive(Debug)]
struct SubRing {
    ring: Ketama,
    /// Sub-ring endpoint index → hashring endpoint index.
    map: Vec<u32>,
}

impl Shuffle {
    fn new(
        ring: &str,
        raw: RawShuffle,
        endpoints: &[Endpoint],
        rf: usize,
    ) -> Result<Self, HashringError> {
        let invalid = |reason: String| HashringError::Invalid {
            ring: ring.to_string(),
            reason,
        };
        let sizes =
            std::iter::once(raw.shard_size).chain(raw.overrides.iter().map(|o| o.shard_size));
        for size in sizes {
            if size == 0 || size > endpoints.len() {
                return Err(invalid(format!(
                    "shard_size {size} must be between 1 and the node count {}",
                    endpoints.len()
                )));
            }
        }
        let mut overrides = Vec::new();
        for o in raw.overrides {
            // Thanos applies an override only with an explicit matcher type.
            let glob = match o.tenant_matcher_type.as_str() {
                "exact" => false,
                "glob" => true,
                _ => continue,
            };
            if glob {
                if let Some(bad) = o.tenants.iter().find(|t| !glob::is_valid(t)) {
                    return Err(invalid(format!("malformed glob pattern {bad:?}")));
                }
            }
            overrides.push((o.shard_size, o.tenants, glob));
        }
        let zone_aware = !raw.zone_awareness_disabled;
        let mut zones: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            let zone = if zone_aware {
                e.az.clone()
            } else {
                String::new()
            };
            zones.entry(zone).or_default().push(i);
        }
        let zone_points = zones
            .into_iter()
            .map(|(z, idx)| (z, ring_points(endpoints, idx.into_iter())))
            .collect();
        Ok(Self {
            shard_size: raw.shard_size,
            zone_aware,
            overrides,
            zone_points,
            rf,
            cache_size: raw.cache_size.max(1),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn shard_size_for(&self, tenant: &str) -> usize {
        self.overrides
            .iter()
            .find(|(_, tenants, glob)| {
                tenants.iter().any(|t| {
                    if *glob {
                        glob::matches(t, tenant)
                    } else {
                        t == tenant
                    }
                })
            })
            .map_or(self.shard_size, |o| o.0)
    }

    /// Endpoint indexes of the tenant's shard: per zone, random points from a generator seeded
    /// by the tenant (and zone), each taking the first not-yet-chosen endpoint at or after it.
    fn select(&self, tenant: &str) -> Vec<u32> {
        let size = self.shard_size_for(tenant);
        let per_zone = if self.zone_aware {
            size.div_ceil(self.zone_points.len().max(1))
        } else {
            size
        };
        let mut chosen: Vec<u32> = Vec::new();
        for (zone, points) in &self.zone_points {
            let in_zone = points.len() / SECTIONS_PER_NODE as usize;
            let mut rng = gorand::GoRand::new(shuffle_seed(tenant, zone));
            for _ in 0..per_zone.min(in_zone) {
                let r = rng.next_u64();
                let mut j = points.partition_point(|p| p.0 < r) % points.len();
                while chosen.contains(&points[j].1) {
                    j = (j + 1) % points.len();
                }
                chosen.push(points[j].1);
            }
        }
        chosen
    }

    fn sub_ring(
        &self,
        ring: &str,
        endpoints: &[Endpoint],
        tenant: &str,
    ) -> Result<Arc<SubRing>, HashringError> {
        if let Some(r) = self.cache.lock().get(tenant) {
            return Ok(r.clone());
        }
        let map = self.select(tenant);
        let eps = map.iter().map(|&i| endpoints[i as usize].clone()).collect();
        let sub = Arc::new(SubRing {
            ring: Ketama::new(ring, eps, self.rf)?,
            map,
        });
        let mut cache = self.cache.lock();
        if cache.len() >= self.cache_size {
            // Rebuilding a shard is deterministic, so dropping them all is only a cost.
            cache.clear();
        }
        cache.insert(tenant.to_string(), sub.clone());
        Ok(sub)
    }
}

/// Thanos's ketama walk never ends when the zones cannot spread `rf` replicas: each zone can
/// take at most one more replica than the smallest zone has endpoints.
fn check_zone_layout(endpoints: &[Endpoint], rf: usize) -> Result<(), String> {
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for e in endpoints {
        *sizes.entry(e.az.as_str()).or_default() += 1;
    }
    if sizes.len() < 2 {
        return Ok(());
    }
    let smallest = sizes.values().copied().min().unwrap_or(0);
    let capacity: usize = sizes.values().map(|&s| s.min(smallest + 1)).sum();
    if rf > capacity {
        return Err(format!(
            "zones {sizes:?} can hold at most {capacity} replicas spread evenly, replication factor is {rf} (Thanos would never finish building this ring)"
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct Ring {
    name: String,
    tenants: Vec<String>,
    glob: bool,
    placer: Placer,
    shuffle: Option<Shuffle>,
    external_labels: BTreeMap<String, String>,
}

impl Ring {
    fn matches(&self, tenant: &str) -> bool {
        self.tenants.is_empty()
            || self.tenants.iter().any(|t| {
                if self.glob {
                    glob::matches(t, tenant)
                } else {
                    t == tenant
                }
            })
    }

    fn endpoints(&self) -> &[Endpoint] {
        match &self.placer {
            Placer::Hashmod(e) => e,
            Placer::Ketama(k) => &k.endpoints,
        }
    }
}

/// Every hashring of a hashrings file, ready to place series.
#[derive(Debug)]
pub struct Hashrings {
    rings: Vec<Ring>,
    /// Identifies the configuration (file content, default algorithm, RF): two nodes with the
    /// same fingerprint place every series alike.
    fingerprint: u64,
}

impl Hashrings {
    /// Parses and validates a hashrings file. `default` is `--receive.hashrings-algorithm`, for
    /// rings that name none; `rf` is `--receive.replication-factor`.
    pub fn from_json(json: &str, default: Algorithm, rf: usize) -> Result<Self, HashringError> {
        let raw: Vec<RawRing> =
            serde_json::from_str(json).map_err(|e| HashringError::Parse(e.to_string()))?;
        if raw.is_empty() {
            return Err(HashringError::Parse("no hashrings in the file".into()));
        }
        let mut seen = HashSet::new();
        let mut rings = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let name = if r.hashring.is_empty() {
                format!("#{i}")
            } else {
                r.hashring.clone()
            };
            let invalid = |reason: &str| HashringError::Invalid {
                ring: name.clone(),
                reason: reason.to_string(),
            };
            let glob = match r.tenant_matcher_type.as_str() {
                "" | "exact" => false,
                "glob" => true,
                other => return Err(invalid(&format!("unknown tenant_matcher_type {other:?}"))),
            };
            if glob {
                if let Some(bad) = r.tenants.iter().find(|t| !glob::is_valid(t)) {
                    return Err(invalid(&format!("malformed glob pattern {bad:?}")));
                }
            }
            let endpoints: Vec<Endpoint> = r
                .endpoints
                .into_iter()
                .map(|e| match e {
                    RawEndpoint::Address(address) => Endpoint::new(address, String::new(), ""),
                    RawEndpoint::Object(RawEndpointObject {
                        address,
                        az,
                        capnproto_address,
                    }) => Endpoint::new(address, az, &capnproto_address),
                })
                .collect();
            if endpoints.is_empty() {
                return Err(invalid("no endpoints"));
            }
            if let Some(e) = endpoints.iter().find(|e| e.address.is_empty()) {
                return Err(invalid(&format!(
                    "endpoint without address (az {:?})",
                    e.az
                )));
            }
            for e in &endpoints {
                if !seen.insert(e.address.clone()) {
                    return Err(invalid(&format!("endpoint {} listed twice", e.address)));
                }
            }
            // Thanos falls back to hashmod for an unknown per-ring algorithm, which moves every
            // series of a misspelt "ketama" ring: refused here instead.
            let algorithm = match r.algorithm.as_str() {
                "" => default,
                a => a.parse().map_err(|_| {
                    invalid(&format!(
                        "unknown algorithm {:?} (hashmod or ketama)",
                        crate::model::Shown(a)
                    ))
                })?,
            };
            let placer = match algorithm {
                Algorithm::Hashmod => {
                    if endpoints.iter().any(|e| !e.az.is_empty()) {
                        return Err(invalid("availability zones need the ketama algorithm"));
                    }
                    if r.shuffle_sharding_config.is_some() {
                        return Err(invalid("shuffle sharding needs the ketama algorithm"));
                    }
                    let mut sorted = endpoints;
                    sorted.sort_by(|a, b| a.address.cmp(&b.address));
                    Placer::Hashmod(sorted)
                }
                Algorithm::Ketama => Placer::Ketama(Ketama::new(&name, endpoints, rf)?),
            };
            let shuffle = match (r.shuffle_sharding_config, &placer) {
                (Some(raw), Placer::Ketama(k)) => Some(Shuffle::new(&name, raw, &k.endpoints, rf)?),
                _ => None,
            };
            rings.push(Ring {
                name,
                tenants: r.tenants,
                glob,
                placer,
                shuffle,
                external_labels: r.external_labels,
            });
        }
        let fingerprint =
            xxhash_rust::xxh64::xxh64(format!("{json}\u{0}{default:?}\u{0}{rf}").as_bytes(), 0);
        Ok(Self { rings, fingerprint })
    }

    fn ring_for(&self, tenant: &str) -> Result<&Ring, HashringError> {
        self.rings
            .iter()
            .find(|r| r.matches(tenant))
            .ok_or_else(|| HashringError::NoMatch(tenant.to_string()))
    }

    /// Name of the hashring that takes `tenant`: the first in file order whose tenants match.
    pub fn hashring_for(&self, tenant: &str) -> Result<&str, HashringError> {
        self.ring_for(tenant).map(|r| r.name.as_str())
    }

    /// See [`Hashrings`]'s `fingerprint`.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The endpoint of replica `n` (0-based) of the series with this hash.
    pub fn get_n(&self, tenant: &str, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        let ring = self.ring_for(tenant)?;
        if let (Some(shuffle), Placer::Ketama(k)) = (&ring.shuffle, &ring.placer) {
            let sub = shuffle.sub_ring(&ring.name, &k.endpoints, tenant)?;
            let ep = sub.ring.get_n(hash, n)?;
            let idx = sub.ring.endpoints.iter().position(|e| e == ep).unwrap_or(0);
            return Ok(&k.endpoints[sub.map[idx] as usize]);
        }
        match &ring.placer {
            Placer::Hashmod(eps) => {
                if n >= eps.len() {
                    return Err(HashringError::InsufficientNodes {
                        have: eps.len(),
                        want: n + 1,
                    });
                }
                let i = hash.wrapping_add(n as u64) % eps.len() as u64;
                Ok(&eps[i as usize])
            }
            Placer::Ketama(k) => k.get_n(hash, n),
        }
    }

    /// Addresses of the shuffle shard `tenant` writes to, sorted; `None` without shuffle
    /// sharding.
    pub fn shard_of(&self, tenant: &str) -> Option<Vec<String>> {
        let ring = self.ring_for(tenant).ok()?;
        let (Some(shuffle), Placer::Ketama(k)) = (&ring.shuffle, &ring.placer) else {
            return None;
        };
        let mut out: Vec<String> = shuffle
            .select(tenant)
            .iter()
            .map(|&i| k.endpoints[i as usize].address.clone())
            .collect();
        out.sort();
        Some(out)
    }

    /// Every endpoint of every hashring.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.rings.iter().flat_map(|r| r.endpoints())
    }

    /// (name, endpoint count) of each hashring, in file order.
    pub fn sizes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rings
            .iter()
            .map(|r| (r.name.as_str(), r.endpoints().len()))
    }

    /// Per listed tenant, the `external_labels` of the first hashring listing it (catch-all
    /// rings list none), as Thanos attaches them to tenants.
    pub fn tenant_labels(&self) -> HashMap<String, BTreeMap<String, String>> {
        let mut out = HashMap::new();
        for r in self.rings.iter().filter(|r| !r.external_labels.is_empty()) {
            for t in &r.tenants {
                out.entry(t.clone())
                    .or_insert_with(|| r.external_labels.clone());
            }
        }
        out
    }

    /// The endpoint this node is, when `local` names one by its address or Cap'n Proto address.
    pub fn local_address(&self, local: &str) -> Option<&str> {
        self.endpoints()
            .find(|e| e.address == local || e.capnproto_address == local)
            .map(|e| e.address.as_str())
    }
}

impl Endpoint {
    fn new(address: String, az: String, capnproto: &str) -> Self {
        let capnproto_address = if capnproto.is_empty() {
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h);
            format!("{host}:19391")
        } else {
            capnproto.to_string()
        };
        Self {
            address,
            az,
            capnproto_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(json: &str, algo: Algorithm, rf: usize) -> Hashrings {
        Hashrings::from_json(json, algo, rf).unwrap()
    }

    fn endpoints_json(addrs: &[(String, String)]) -> String {
        let eps: Vec<String> = addrs
            .iter()
            .map(|(a, z)| format!(r#"{{"address":"{a}","az":"{z}"}}"#))
            .collect();
        format!(r#"[{{"endpoints":[{}]}}]"#, eps.join(","))
    }

    #[test]
    fn validation_rejects_what_thanos_rejects_and_endless_zone_walks() {
        let cases = [
            (r#"[]"#, Algorithm::Hashmod, 1, "no hashrings"),
            (r#"{"x":1}"#, Algorithm::Hashmod, 1, "parse"),
            (
                r#"[{"endpoints":[{"address":"a:1","az":"z"}]}]"#,
                Algorithm::Hashmod,
                1,
                "ketama",
            ),
            (
                r#"[{"endpoints":["a:1","b:1"]}]"#,
                Algorithm::Ketama,
                3,
                "larger than replication factor",
            ),
            (
                r#"[{"endpoints":["a:1","a:1"]}]"#,
                Algorithm::Hashmod,
                1,
                "twice",
            ),
            (
                r#"[{"endpoints":[]}]"#,
                Algorithm::Hashmod,
                1,
                "no endpoints",
            ),
            (
                r#"[{"tenants":["[a"],"tenant_matcher_type":"glob","endpoints":["a:1"]}]"#,
                Algorithm::Hashmod,
                1,
                "glob",
            ),
            (
                r#"[{"endpoints":["a:1"],"shuffle_sharding_config":{"shard_size":1}}]"#,
                Algorithm::Hashmod,
                1,
                "shuffle",
            ), // Stricter than Thanos, which would take these as a catch-all ring, an endpoint
            // without a zone and a hashmod ring.
            (
                r#"[{"tenant":["a"],"endpoints":["a:1"]}]"#,
                Algorithm::Hashmod,
                1,
                "unknown field `tenant`",
            ),
            (
                r#"[{"endpoints":[{"address":"a:1","zone":"z"}]}]"#,
                Algorithm::Hashmod,
                1,
                "parse",
            ),
            (
                r#"[{"endpoints":["a:1"],"algorithm":"ketema"}]"#,
                Algorithm::Hashmod,
                1,
                "unknown algorithm \"ketema\"",
            ),
        ];
        for (json, algo, rf, want) in cases {
            let err = Hashrings::from_json(json, algo, rf)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        // Zones 4/1/1 cannot spread 5 replicas; Thanos would spin forever building the ring.
        let eps: Vec<(String, String)> = ["a", "a", "a", "a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, z)| (format!("n{i}:1"), z.to_string()))
            .collect();
        let err = Hashrings::from_json(&endpoints_json(&eps), Algorithm::Ketama, 5).unwrap_err();
        assert!(err.to_string().contains("never finish"), "{err}");
        assert!(Hashrings::from_json(&endpoints_json(&eps), Algorithm::Ketama, 4).is_ok());
    }

    #[test]
    fn tenants_get_the_external_labels_of_the_first_ring_listing_them() {
        let r = ring(
            r#"[{"hashring":"a","tenants":["t1"],"endpoints":["a:1"],"external_labels":{"zone":"eu"}},
                {"hashring":"b","tenants":["t1","t2"],"endpoints":["b:1"],"external_labels":{"zone":"us"}},
                {"hashring":"c","endpoints":["c:1"],"external_labels":{"zone":"any"}}]"#,
            Algorithm::Hashmod,
            1,
        );
        let l = r.tenant_labels();
        assert_eq!(l["t1"]["zone"], "eu");
        assert_eq!(l["t2"]["zone"], "us");
        assert_eq!(l.len(), 2, "a catch-all ring lists no tenant");
    }

    #[test]
    fn endpoints_may_be_strings_or_objects() {
        let r = ring(
            r#"[{"hashring":"h","endpoints":["a:10901",{"address":"b:10901","capnproto_address":"b:5"}]}]"#,
            Algorithm::Hashmod,
            1,
        );
        assert_eq!(r.local_address("a:19391"), Some("a:10901"));
        assert_eq!(r.local_address("b:5"), Some("b:10901"));
        assert_eq!(r.local_address("c:1"), None);
        assert_eq!(r.sizes().collect::<Vec<_>>(), [("h", 2)]);
    }

    #[test]
    fn fingerprints_differ_exactly_when_placement_inputs_do() {
        let a = r#"[{"hashring":"h","endpoints":["a:1","b:1","c:1"]}]"#;
        let b = r#"[{"hashring":"h","endpoints":["a:1","b:1","d:1"]}]"#;
        let fp = |json: &str, algo, rf| Hashrings::from_json(json, algo, rf).unwrap().fingerprint();
        assert_eq!(fp(a, Algorithm::Hashmod, 2), fp(a, Algorithm::Hashmod, 2));
        assert_ne!(fp(a, Algorithm::Hashmod, 2), fp(b, Algorithm::Hashmod, 2));
        assert_ne!(fp(a, Algorithm::Hashmod, 2), fp(a, Algorithm::Ketama, 2));
        assert_ne!(fp(a, Algorithm::Hashmod, 2), fp(a, Algorithm::Hashmod, 3));
    }

    proptest! {
        /// The hash is XXH64 of the whole concatenation, also when the hasher's buffer is reused.
        #[test]
        fn series_hash_is_xxh64_of_the_joined_labels(
            tenant in "[a-z]{0,20}",
            labels in proptest::collection::vec(("[a-z_]{1,30}", "\\PC{0,700}"), 0..12),
        ) {
            let mut joined = tenant.as_bytes().to_vec();
            joined.push(0xff);
            for (n, v) in &labels {
                joined.extend_from_slice(n.as_bytes());
                joined.push(0xff);
                joined.extend_from_slice(v.as_bytes());
                joined.push(0xff);
            }
            let want = xxhash_rust::xxh64::xxh64(&joined, 0);
            prop_assert_eq!(series_hash(&tenant, labels.iter().map(|(n, v)| (n.as_str(), v.as_str()))), want);
            let mut hasher = SeriesHasher::default();
            for _ in 0..2 {
                prop_assert_eq!(hasher.hash(&tenant, labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))), want);
            }
        }
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_and_config_order_does_not_matter(
            n in 1usize..8,
            zones in 1usize..4,
            rf in 1usize..4,
            hash in any::<u64>(),
            rotate in 0usize..8,
            ketama in any::<bool>(),
        ) {
            prop_assume!(rf <= n);
            let algo = if ketama { Algorithm::Ketama } else { Algorithm::Hashmod };
            let zones = if ketama { zones } else { 1 };
            let eps: Vec<(String, String)> = (0..n)
                .map(|i| (format!("10.0.0.{i}:10901"), if zones > 1 { format!("z{}", i % zones) } else { String::new() }))
                .collect();
            let mut rotated = eps.clone();
            rotated.rotate_left(rotate % n);
            let (Ok(a), Ok(b)) = (
                Hashrings::from_json(&endpoints_json(&eps), algo, rf),
                Hashrings::from_json(&endpoints_json(&rotated), algo, rf),
            ) else {
                return Ok(());
            };
            let pick = |r: &Hashrings| -> Vec<String> {
                (0..rf).map(|i| r.get_n("t", hash, i).unwrap().address.clone()).collect()
            };
            let (pa, pb) = (pick(&a), pick(&b));
            prop_assert_eq!(&pa, &pb);
            let distinct: HashSet<&String> = pa.iter().collect();
            prop_assert_eq!(distinct.len(), rf);
            if zones > 1 {
                // No zone holds two replicas while another zone holds none.
                let mut per: BTreeMap<String, usize> = (0..zones).map(|z| (format!("z{z}"), 0)).collect();
                for a in &pa {
                    let i: usize = a.trim_start_matches("10.0.0.").trim_end_matches(":10901").parse().unwrap();
                    *per.get_mut(&format!("z{}", i % zones)).unwrap() += 1;
                }
                let (lo, hi) = (per.values().min().unwrap(), per.values().max().unwrap());
                prop_assert!(hi - lo <= 1, "{:?}", per);
            }
        }
    }
}
