//! Placement vectors computed with Thanos's own hashring code (tests/data/hashring-golden.json,
//! a copy of the shared testdata; its README states the rules). Every case of every section is
//! checked, and a failure names the case.

use std::collections::HashSet;

use serde_json::Value;
use wharf::hashring::{series_hash, Algorithm, Hashrings};

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/hashring-golden.json"
    ))
    .expect("golden file");
    serde_json::from_str(&text).expect("golden json")
}

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

fn labels(v: &Value) -> Vec<(&str, &str)> {
    v.as_array()
        .expect("labels")
        .iter()
        .map(|p| (s(&p[0]), s(&p[1])))
        .collect()
}

fn hash_of(case: &Value) -> u64 {
    let h = series_hash(s(&case["tenant"]), labels(&case["labels"]));
    let want: u64 = s(&case["series_hash"]).parse().expect("u64");
    assert_eq!(h, want, "series_hash of {}", case["id"]);
    h
}

fn ring_file(endpoints: &Value) -> String {
    serde_json::json!([{ "hashring": "golden", "endpoints": endpoints }]).to_string()
}

fn algorithm(v: &Value) -> Algorithm {
    s(v).parse().expect("algorithm")
}

fn rf(v: &Value) -> usize {
    v.as_u64().expect("rf") as usize
}

fn placement(r: &Hashrings, tenant: &str, h: u64, rf: usize) -> Vec<String> {
    (0..rf)
        .map(|n| r.get_n(tenant, h, n).expect("placement").address.clone())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| s(x).to_string())
        .collect()
}

#[test]
fn placement_cases() {
    let g = golden();
    let cases = g["placement_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 204);
    for c in cases {
        let rf = rf(&c["replication_factor"]);
        let r = Hashrings::from_json(&ring_file(&c["endpoints"]), algorithm(&c["algorithm"]), rf)
            .unwrap_or_else(|e| panic!("{}: {e}", c["id"]));
        let h = hash_of(c);
        let tenant = s(&c["tenant"]);
        assert_eq!(
            placement(&r, tenant, h, rf),
            strings(&c["expected"]),
            "{}",
            c["id"]
        );
        // Asking past the ring's size is an error, never a wrap-around.
        let n = c["endpoints"].as_array().unwrap().len();
        assert!(r.get_n(tenant, h, n).is_err(), "{}", c["id"]);
    }
}

#[test]
fn multi_hashring_cases() {
    let g = golden();
    let mut count = 0;
    for set in g["multi_hashring"].as_array().unwrap() {
        let rf = rf(&set["replication_factor"]);
        let r = Hashrings::from_json(
            &set["config"].to_string(),
            algorithm(&set["default_algorithm"]),
            rf,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", set["name"]));
        for c in set["cases"].as_array().unwrap() {
            count += 1;
            let h = hash_of(c);
            let tenant = s(&c["tenant"]);
            match c["expected_hashring"].as_str() {
                Some(ring) => {
                    assert_eq!(r.hashring_for(tenant).ok(), Some(ring), "{}", c["id"]);
                    assert_eq!(
                        placement(&r, tenant, h, rf),
                        strings(&c["expected"]),
                        "{}",
                        c["id"]
                    );
                }
                None => {
                    let err = r.hashring_for(tenant).unwrap_err().to_string();
                    assert!(err.contains(s(&c["expected_error"])), "{}: {err}", c["id"]);
                    assert!(r.get_n(tenant, h, 0).is_err(), "{}", c["id"]);
                }
            }
        }
    }
    assert_eq!(count, 41);
}

#[test]
fn ring_change_cases_and_movement() {
    let g = golden();
    let mut count = 0;
    for sc in g["ring_change"].as_array().unwrap() {
        let rf = rf(&sc["replication_factor"]);
        let algo = algorithm(&sc["algorithm"]);
        let before = Hashrings::from_json(&ring_file(&sc["endpoints_before"]), algo, rf).unwrap();
        let after = Hashrings::from_json(&ring_file(&sc["endpoints_after"]), algo, rf).unwrap();
        for c in sc["series"].as_array().unwrap() {
            count += 1;
            let h = hash_of(c);
            let tenant = s(&c["tenant"]);
            assert_eq!(
                placement(&before, tenant, h, rf),
                strings(&c["before"]),
                "{}",
                c["id"]
            );
            assert_eq!(
                placement(&after, tenant, h, rf),
                strings(&c["after"]),
                "{}",
                c["id"]
            );
        }
        let (mut primary, mut set_changed, mut copies) = (0u64, 0u64, 0u64);
        for i in 0..10_000 {
            let id = i.to_string();
            let h = series_hash(
                "default-tenant",
                [("__name__", "ring_change_probe"), ("series", id.as_str())],
            );
            let b = placement(&before, "default-tenant", h, rf);
            let a = placement(&after, "default-tenant", h, rf);
            primary += u64::from(a[0] != b[0]);
            let bs: HashSet<&String> = b.iter().collect();
            let as_: HashSet<&String> = a.iter().collect();
            set_changed += u64::from(bs != as_);
            copies += as_.difference(&bs).count() as u64;
        }
        let sum = &sc["summary"];
        assert_eq!(
            (primary, set_changed, copies),
            (
                sum["primary_moved"].as_u64().unwrap(),
                sum["replica_set_changed"].as_u64().unwrap(),
                sum["copies_moved"].as_u64().unwrap()
            ),
            "{}",
            sc["id"]
        );
    }
    assert_eq!(count, 30);
}

#[test]
fn shuffle_sharding_cases() {
    let g = golden();
    let mut count = 0;
    for set in g["shuffle_sharding"].as_array().unwrap() {
        let rf = rf(&set["replication_factor"]);
        let r = Hashrings::from_json(&set["config"].to_string(), Algorithm::Ketama, rf)
            .unwrap_or_else(|e| panic!("{}: {e}", set["name"]));
        for c in set["cases"].as_array().unwrap() {
            count += 1;
            let tenant = s(&c["tenant"]);
            for z in c["zone_seeds"].as_array().unwrap() {
                let seed = wharf::hashring::shuffle_seed(tenant, s(&z["zone"]));
                assert_eq!(seed.to_string(), s(&z["seed"]), "{} seed", c["id"]);
                assert_eq!(
                    wharf::hashring::go_rand_first(seed).to_string(),
                    s(&z["first_random"]),
                    "{} first random",
                    c["id"]
                );
            }
            assert_eq!(
                r.shard_of(tenant),
                Some(strings(&c["expected_shard"])),
                "{} shard",
                c["id"]
            );
            let h = hash_of(c);
            assert_eq!(
                placement(&r, tenant, h, rf),
                strings(&c["expected"]),
                "{}",
                c["id"]
            );
        }
    }
    assert_eq!(count, 30);
}
