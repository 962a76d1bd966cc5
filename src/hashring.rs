//! Thanos-compatible hashrings: the hashrings JSON, tenant → hashring matching, and series
//! placement by hashmod or ketama (with availability-zone spread), bit-identical to Thanos so
//! that a mixed fleet agrees on where every series lives (`tests/hashring_golden.rs` checks the
//! vectors computed with Thanos's own code).

mod glob;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Deserialize;
use xxhash_rust::xxh64::Xxh64;

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

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Object {
        address: String,
        #[serde(default)]
        az: String,
        #[serde(default)]
        capnproto_address: String,
    },
}

#[derive(Deserialize)]
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
    shuffle_sharding_config: Option<serde_json::Value>,
}

/// Hashes a series for placement: XXH64 (seed 0) over the tenant, `0xff`, then each label's
/// name, `0xff`, value, `0xff`, in arrival order (not re-sorted), as Thanos does.
pub fn series_hash<'a>(tenant: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(tenant.as_bytes());
    h.update(&[0xff]);
    for (n, v) in labels {
        h.update(n.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
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
        let mut points: Vec<(u64, u32)> =
            Vec::with_capacity(endpoints.len() * SECTIONS_PER_NODE as usize);
        for (idx, ep) in endpoints.iter().enumerate() {
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
                    RawEndpoint::Object {
                        address,
                        az,
                        capnproto_address,
                    } => Endpoint::new(address, az, &capnproto_address),
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
            // Thanos falls back to hashmod for an unknown per-ring algorithm.
            let algorithm = match r.algorithm.as_str() {
                "" => default,
                a => a.parse().unwrap_or(Algorithm::Hashmod),
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
                Algorithm::Ketama => {
                    if r.shuffle_sharding_config.is_some() {
                        return Err(invalid("shuffle sharding is not supported yet"));
                    }
                    Placer::Ketama(Ketama::new(&name, endpoints, rf)?)
                }
            };
            rings.push(Ring {
                name,
                tenants: r.tenants,
                glob,
                placer,
                external_labels: r.external_labels,
            });
        }
        Ok(Self { rings })
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

    /// The endpoint of replica `n` (0-based) of the series with this hash.
    pub fn get_n(&self, tenant: &str, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        match &self.ring_for(tenant)?.placer {
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

    /// The `external_labels` of the hashring that takes `tenant`.
    pub fn external_labels(&self, tenant: &str) -> Option<&BTreeMap<String, String>> {
        self.ring_for(tenant).ok().map(|r| &r.external_labels)
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
    fn endpoints_may_be_strings_or_objects_and_unknown_keys_are_ignored() {
        let r = ring(
            r#"[{"hashring":"h","endpoints":["a:10901",{"address":"b:10901","capnproto_address":"b:5"}],"future_key":1}]"#,
            Algorithm::Hashmod,
            1,
        );
        assert_eq!(r.local_address("a:19391"), Some("a:10901"));
        assert_eq!(r.local_address("b:5"), Some("b:10901"));
        assert_eq!(r.local_address("c:1"), None);
        assert_eq!(r.sizes().collect::<Vec<_>>(), [("h", 2)]);
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
