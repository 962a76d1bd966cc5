//! The Thanos StoreAPI acceptance cases (pkg/store/acceptance_test.go, restated in
//! shared/reference/storeapi.md §9), run against a real receiver over HTTP remote write and
//! real gRPC.
//!
//! Upstream runs them against a store whose only external label is region="eu-west". A Wharf
//! tenant always also carries tenant_id="<tenant>" (as a Thanos Receive tenant does), so every
//! call here adds "tenant_id" to without_replica_labels; that removes exactly that label and
//! leaves the cases' expectations unchanged.

mod common;

use common::*;
use wharf::proto::thanos::{self as pb, label_matcher::Type};

const MIN_TIME: i64 = 0;
const MAX_TIME: i64 = 253_402_300_799_000;

fn w() -> Vec<String> {
    vec!["replica".into(), "tenant_id".into()]
}

/// A fresh receiver holding the given series, each with one sample.
/// Label pairs, timestamp and value of one series' only sample.
type OneSample<'a> = (&'a [(&'a str, &'a str)], i64, f64);

fn store_with(series_list: &[OneSample]) -> Receiver {
    let rx = Receiver::start(&["--label", "region=\"eu-west\""]);
    if !series_list.is_empty() {
        let ts = series_list
            .iter()
            .map(|(l, t, v)| series(l, &[(*t, *v)]))
            .collect();
        let (code, body) = write(rx.rw(), None, ts);
        assert_eq!(code, 200, "{body}");
    }
    rx
}

fn names(rx: &Receiver, start: i64, end: i64, matchers: Vec<pb::LabelMatcher>) -> Vec<String> {
    let r = rx
        .store()
        .label_names(pb::LabelNamesRequest {
            start,
            end,
            matchers,
            without_replica_labels: w(),
            ..Default::default()
        })
        .expect("label names");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    r.names
}

fn values(
    rx: &Receiver,
    label: &str,
    start: i64,
    end: i64,
    matchers: Vec<pb::LabelMatcher>,
) -> Vec<String> {
    let r = rx
        .store()
        .label_values(pb::LabelValuesRequest {
            label: label.into(),
            start,
            end,
            matchers,
            without_replica_labels: w(),
            ..Default::default()
        })
        .expect("label values");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    r.values
}

fn series_labels(rx: &Receiver, matchers: Vec<pb::LabelMatcher>, skip_chunks: bool) -> Vec<Series> {
    let (out, warnings) = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: MIN_TIME,
            max_time: MAX_TIME,
            matchers,
            skip_chunks,
            without_replica_labels: w(),
            ..Default::default()
        })
        .expect("series");
    assert!(warnings.is_empty(), "{warnings:?}");
    let got: Vec<Series> = out.iter().map(pairs).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "series must be streamed sorted by label set");
    got
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn l(pairs: &[(&str, &str)]) -> Series {
    let mut v: Series = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.push(("region".into(), "eu-west".into()));
    v.sort();
    v
}

#[test]
fn g1_empty_store() {
    let rx = store_with(&[]);
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![]),
        Vec::<String>::new(),
        "A01"
    );
    let err = rx
        .store()
        .label_values(pb::LabelValuesRequest {
            label: String::new(),
            start: MIN_TIME,
            end: MAX_TIME,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "A02");
    assert_eq!(err.message(), "label name parameter cannot be empty", "A02");
    assert!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![]).is_empty(),
        "A03"
    );
    // Thanos's acceptance test asks one TSDB store; Receive's proxy in front of its tenants
    // (what Wharf answers as) asks an empty tenant, min time i64::MAX, only for a window that
    // reaches it. Measured with Thanos Receive v0.42.4.
    assert_eq!(
        values(&rx, "region", MIN_TIME, i64::MAX, vec![]),
        s(&["eu-west"]),
        "A04"
    );
    assert!(
        values(&rx, "region", MIN_TIME, MAX_TIME, vec![]).is_empty(),
        "A04, window before the empty tenant's min time"
    );
}

#[test]
fn g2_g3_single_label() {
    let now = now_ms();
    let rx = store_with(&[(&[("foo", "foovalue1")], now, 1.0)]);
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![]),
        s(&["foo", "region"]),
        "A05"
    );
    assert_eq!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![]),
        s(&["foovalue1"]),
        "A06"
    );
    assert!(
        values(&rx, "replica", MIN_TIME, MAX_TIME, vec![]).is_empty(),
        "A07"
    );

    let rx = store_with(&[
        (&[("foo", "foovalue1")], now, 1.0),
        (&[("foo", "foovalue2")], now, 1.0),
    ]);
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![]),
        s(&["foo", "region"]),
        "A08"
    );
    assert_eq!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![]),
        s(&["foovalue1", "foovalue2"]),
        "A09"
    );
}

#[test]
fn g4_names_and_values_with_matchers_and_ranges() {
    let now = now_ms();
    let rx = store_with(&[
        (&[("foo", "foovalue1")], now, 1.0),
        (&[("foo", "foovalue2")], now, 1.0),
        (&[("bar", "barvalue1"), ("foo", "foovalue1")], now, 1.0),
    ]);
    let old = now - 4 * 3600 * 1000;
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![]),
        s(&["bar", "foo", "region"]),
        "A10"
    );
    assert!(names(&rx, MIN_TIME, old, vec![]).is_empty(), "A11");
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![eq("bar", "barvalue1")]),
        s(&["bar", "foo", "region"]),
        "A12"
    );
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![eq("foo", "foovalue2")]),
        s(&["foo", "region"]),
        "A13"
    );
    assert!(
        names(&rx, MIN_TIME, MAX_TIME, vec![eq("bar", "different")]).is_empty(),
        "A14"
    );
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![eq("region", "eu-west")]),
        s(&["bar", "foo", "region"]),
        "A15"
    );
    assert!(
        names(&rx, MIN_TIME, MAX_TIME, vec![eq("region", "different")]).is_empty(),
        "A16"
    );
    assert_eq!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![]),
        s(&["foovalue1", "foovalue2"]),
        "A17"
    );
    assert_eq!(
        values(&rx, "bar", MIN_TIME, MAX_TIME, vec![]),
        s(&["barvalue1"]),
        "A18"
    );
    assert!(values(&rx, "foo", MIN_TIME, old, vec![]).is_empty(), "A19");
    assert!(values(&rx, "bar", MIN_TIME, old, vec![]).is_empty(), "A20");
    assert_eq!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![eq("bar", "barvalue1")]),
        s(&["foovalue1"]),
        "A21"
    );
    assert!(
        values(&rx, "foo", MIN_TIME, MAX_TIME, vec![eq("bar", "different")]).is_empty(),
        "A22"
    );
    assert!(
        values(
            &rx,
            "region",
            MIN_TIME,
            MAX_TIME,
            vec![eq("__name__", "nonexistent")]
        )
        .is_empty(),
        "A23"
    );
    assert!(
        values(
            &rx,
            "region",
            MIN_TIME,
            MAX_TIME,
            vec![eq("region", "eu-east")]
        )
        .is_empty(),
        "A24"
    );
    assert_eq!(
        values(
            &rx,
            "foo",
            MIN_TIME,
            MAX_TIME,
            vec![eq("region", "eu-west")]
        ),
        s(&["foovalue1", "foovalue2"]),
        "A25"
    );
    assert_eq!(
        values(
            &rx,
            "bar",
            MIN_TIME,
            MAX_TIME,
            vec![eq("region", "eu-west")]
        ),
        s(&["barvalue1"]),
        "A26"
    );
    assert!(
        values(
            &rx,
            "foo",
            MIN_TIME,
            MAX_TIME,
            vec![eq("region", "different")]
        )
        .is_empty(),
        "A27"
    );
    assert!(
        values(
            &rx,
            "bar",
            MIN_TIME,
            MAX_TIME,
            vec![eq("region", "different")]
        )
        .is_empty(),
        "A28"
    );
}

#[test]
fn g5_g6_external_labels_win_and_match() {
    let rx = store_with(&[(&[("foo", "bar"), ("region", "somewhere")], 0, 0.0)]);
    assert_eq!(
        series_labels(&rx, vec![eq("foo", "bar")], true),
        vec![l(&[("foo", "bar")])],
        "A29"
    );

    let rx = store_with(&[
        (&[("__name__", "up"), ("foo", "bar"), ("job", "C")], 0, 0.0),
        (&[("__name__", "up"), ("foo", "baz"), ("job", "C")], 0, 0.0),
    ]);
    assert_eq!(
        values(
            &rx,
            "region",
            MIN_TIME,
            MAX_TIME,
            vec![eq("__name__", "up"), eq("job", "C")]
        ),
        s(&["eu-west"]),
        "A30"
    );
}

#[test]
fn g7_matching_behaviour() {
    let rx = store_with(&[
        (&[("n", "1")], 0, 0.0),
        (&[("i", "a"), ("n", "1")], 0, 0.0),
        (&[("i", "b"), ("n", "1")], 0, 0.0),
        (&[("n", "2")], 0, 0.0),
        (&[("n", "2.5")], 0, 0.0),
    ]);
    use Type::{Eq as E, Neq as N, Nre as NR, Re as R};
    let ia1 = l(&[("i", "a"), ("n", "1")]);
    let ib1 = l(&[("i", "b"), ("n", "1")]);
    let n1 = l(&[("n", "1")]);
    let n2 = l(&[("n", "2")]);
    let n25 = l(&[("n", "2.5")]);
    let all = vec![
        ia1.clone(),
        ib1.clone(),
        n1.clone(),
        n2.clone(),
        n25.clone(),
    ];
    type Case<'a> = (&'a str, Vec<(Type, &'a str, &'a str)>, Vec<Series>);
    let cases: Vec<Case> = vec![
        (
            "A31",
            vec![(E, "n", "1")],
            vec![ia1.clone(), ib1.clone(), n1.clone()],
        ),
        ("A32", vec![(E, "n", "1"), (E, "i", "a")], vec![ia1.clone()]),
        ("A33", vec![(E, "n", "1"), (E, "i", "missing")], vec![]),
        ("A34", vec![(E, "missing", "")], all.clone()),
        ("A35", vec![(N, "n", "1")], vec![n2.clone(), n25.clone()]),
        ("A36", vec![(R, "i", ".+")], vec![ia1.clone(), ib1.clone()]),
        ("A37", vec![(R, "i", ".*")], all.clone()),
        (
            "A38",
            vec![(E, "i", "")],
            vec![n1.clone(), n2.clone(), n25.clone()],
        ),
        ("A39", vec![(N, "i", "")], vec![ia1.clone(), ib1.clone()]),
        ("A40", vec![(N, "missing", "")], vec![]),
        (
            "A41",
            vec![(E, "n", "1"), (N, "i", "a")],
            vec![ib1.clone(), n1.clone()],
        ),
        (
            "A42",
            vec![(R, "n", "^1$")],
            vec![ia1.clone(), ib1.clone(), n1.clone()],
        ),
        (
            "A43",
            vec![(E, "n", "1"), (R, "i", "^a$")],
            vec![ia1.clone()],
        ),
        (
            "A44",
            vec![(E, "n", "1"), (R, "i", "^a?$")],
            vec![ia1.clone(), n1.clone()],
        ),
        (
            "A45",
            vec![(R, "i", "^$")],
            vec![n1.clone(), n2.clone(), n25.clone()],
        ),
        ("A46", vec![(E, "n", "1"), (R, "i", "^$")], vec![n1.clone()]),
        (
            "A47",
            vec![(E, "n", "1"), (R, "i", "^.*$")],
            vec![ia1.clone(), ib1.clone(), n1.clone()],
        ),
        (
            "A48",
            vec![(E, "n", "1"), (R, "i", "^.+$")],
            vec![ia1.clone(), ib1.clone()],
        ),
        ("A49", vec![(NR, "n", "^1$")], vec![n2.clone(), n25.clone()]),
        ("A50", vec![(NR, "n", "1")], vec![n2.clone(), n25.clone()]),
        ("A51", vec![(NR, "n", "1|2.5")], vec![n2.clone()]),
        ("A52", vec![(NR, "n", "(1|2.5)")], vec![n2.clone()]),
        (
            "A53",
            vec![(E, "n", "1"), (NR, "i", "^a$")],
            vec![ib1.clone(), n1.clone()],
        ),
        (
            "A54",
            vec![(E, "n", "1"), (NR, "i", "^a?$")],
            vec![ib1.clone()],
        ),
        (
            "A55",
            vec![(E, "n", "1"), (NR, "i", "^$")],
            vec![ia1.clone(), ib1.clone()],
        ),
        ("A56", vec![(E, "n", "1"), (NR, "i", "^.*$")], vec![]),
        (
            "A57",
            vec![(E, "n", "1"), (NR, "i", "^.+$")],
            vec![n1.clone()],
        ),
        (
            "A58",
            vec![(E, "n", "1"), (N, "i", ""), (E, "i", "a")],
            vec![ia1.clone()],
        ),
        (
            "A59",
            vec![(E, "n", "1"), (N, "i", "b"), (R, "i", "^(b|a).*$")],
            vec![ia1.clone()],
        ),
        (
            "A60",
            vec![(R, "n", "(1|2)")],
            vec![ia1.clone(), ib1.clone(), n1.clone(), n2.clone()],
        ),
        ("A61", vec![(R, "i", "a|b")], vec![ia1.clone(), ib1.clone()]),
        (
            "A62",
            vec![(R, "i", "(a|b)")],
            vec![ia1.clone(), ib1.clone()],
        ),
        ("A63", vec![(R, "n", "x1|2")], vec![n2.clone()]),
        (
            "A64",
            vec![(R, "n", "2|2\\.5")],
            vec![n2.clone(), n25.clone()],
        ),
        (
            "A65",
            vec![(R, "i", "c||d")],
            vec![n1.clone(), n2.clone(), n25.clone()],
        ),
        (
            "A66",
            vec![(R, "i", "(c||d)")],
            vec![n1.clone(), n2.clone(), n25.clone()],
        ),
    ];
    for (id, ms, want) in cases {
        let ms = ms.into_iter().map(|(t, n, v)| matcher(t, n, v)).collect();
        assert_eq!(series_labels(&rx, ms, false), want, "{id}");
    }
}

#[test]
fn g8_g9_non_equal_matchers_on_external_labels() {
    let rx = store_with(&[(&[("__name__", "up"), ("foo", "bar")], 0, 0.0)]);
    assert_eq!(
        names(
            &rx,
            MIN_TIME,
            MAX_TIME,
            vec![matcher(Type::Re, "region", ".*")]
        ),
        s(&["__name__", "foo", "region"]),
        "A67"
    );
    let ms = vec![eq("__name__", "up"), matcher(Type::Re, "region", ".*")];
    assert_eq!(
        values(&rx, "region", MIN_TIME, MAX_TIME, ms),
        s(&["eu-west"]),
        "A68"
    );

    let now = now_ms();
    let rx = store_with(&[
        (&[("__name__", "up"), ("pod", "pod-1")], now, 1.0),
        (&[("__name__", "up"), ("pod", "pod-2")], now, 1.0),
        (&[("__name__", "kube_pod_info"), ("pod", "pod-1")], now, 1.0),
    ]);
    assert_eq!(
        names(
            &rx,
            MIN_TIME,
            MAX_TIME,
            vec![eq("__name__", "kube_pod_info")]
        ),
        s(&["__name__", "pod", "region"]),
        "A69"
    );
    assert_eq!(
        names(&rx, MIN_TIME, MAX_TIME, vec![]),
        s(&["__name__", "pod", "region"]),
        "A70"
    );
    assert_eq!(
        values(
            &rx,
            "pod",
            MIN_TIME,
            MAX_TIME,
            vec![eq("__name__", "kube_pod_info")]
        ),
        s(&["pod-1"]),
        "A71"
    );
    assert_eq!(
        values(&rx, "pod", MIN_TIME, MAX_TIME, vec![]),
        s(&["pod-1", "pod-2"]),
        "A72"
    );
}

#[test]
fn a73_series_split_into_chunks_of_120() {
    let rx = Receiver::start(&["--label", "region=\"eu-west\""]);
    let base = (now_ms() - 2 * 24 * 3600 * 1000) / 1000 * 1000;
    let n = 2 * 65535 + 5;
    let samples: Vec<(i64, f64)> = (0..n).map(|i| (base + i, 1.0)).collect();
    let (code, body) = write(rx.rw(), None, vec![series(&[("a", "b")], &samples)]);
    assert_eq!(code, 200, "{body}");
    let (out, _) = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: base,
            max_time: base + n,
            matchers: vec![eq("a", "b"), eq("region", "eu-west")],
            without_replica_labels: vec!["tenant_id".into()],
            ..Default::default()
        })
        .expect("series");
    assert_eq!(out.len(), 1);
    assert_eq!(pairs(&out[0]), l(&[("a", "b")]));
    let chunks = &out[0].chunks;
    assert_eq!(chunks.len(), 1093);
    for (i, c) in chunks.iter().enumerate() {
        let data = &c.raw.as_ref().unwrap().data;
        let got = wharf::tsdb::chunkenc::decode_xor(data).unwrap().len();
        assert_eq!(got, if i < 1092 { 120 } else { 35 }, "chunk {i}");
        assert_eq!(
            c.raw.as_ref().unwrap().hash,
            xxhash_rust::xxh64::xxh64(data, 0),
            "chunk hash is xxhash64 of its bytes"
        );
    }
    assert_eq!(samples_of_all(&out).len() as i64, n);
}

fn samples_of_all(out: &[pb::Series]) -> Vec<(i64, u64)> {
    out.iter().flat_map(samples).collect()
}

#[test]
fn info_announces_tenants_and_store() {
    let now = now_ms();
    let rx = store_with(&[(&[("foo", "x")], now, 1.0)]);
    let (code, _) = write(
        rx.rw(),
        Some("team-b"),
        vec![series(&[("foo", "y")], &[(now, 1.0)])],
    );
    assert_eq!(code, 200);
    let info = rx.store().info().expect("info");
    assert_eq!(info.component_type, "receive");
    let store = info.store.expect("store info present");
    assert!(store.supports_without_replica_labels && store.supports_sharding);
    assert_eq!(store.min_time, now);
    assert_eq!(store.max_time, i64::MAX);
    let tenants: Vec<String> = info
        .label_sets
        .iter()
        .map(|ls| {
            ls.labels
                .iter()
                .find(|l| l.name == "tenant_id")
                .map(|l| l.value.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(tenants, s(&["default-tenant", "team-b"]));
    assert!(info.label_sets.iter().all(|ls| ls
        .labels
        .iter()
        .any(|l| l.name == "region" && l.value == "eu-west")));
    assert_eq!(store.tsdb_infos.len(), 2);
    // Tenants are selected through the tenant label, and no other API is announced.
    assert!(info.exemplars.is_none() && info.rules.is_none() && info.targets.is_none());
    let (out, _) = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: MIN_TIME,
            max_time: MAX_TIME,
            matchers: vec![eq("tenant_id", "team-b"), matcher(Type::Re, "foo", ".+")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(pairs(&out[0]).contains(&("foo".into(), "y".into())));
}

#[test]
fn series_request_errors_and_ext_only_matchers() {
    let rx = store_with(&[(&[("foo", "x")], now_ms(), 1.0)]);
    let err = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: MIN_TIME,
            max_time: MAX_TIME,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let bad = vec![matcher(Type::Re, "foo", "(")];
    let err = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: MIN_TIME,
            max_time: MAX_TIME,
            matchers: bad,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Only external-label matchers: Thanos answers with a warning per tenant and no series.
    let only_ext = vec![eq("region", "eu-west")];
    let (out, warnings) = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: MIN_TIME,
            max_time: MAX_TIME,
            matchers: only_ext,
            ..Default::default()
        })
        .unwrap();
    assert!(out.is_empty());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no matchers specified (excluding external labels)")),
        "{warnings:?}"
    );
}

/// A tenant answers a label query only if the window reaches its min time, as Thanos's proxy
/// asks a store: the empty default tenant (min time i64::MAX) must not add its `tenant_id` to
/// a window in the past, but does to one reaching i64::MAX.
#[test]
fn label_queries_skip_tenants_whose_data_starts_after_the_window() {
    let rx = Receiver::start(&[]);
    let now = now_ms();
    let (code, body) = write(
        rx.rw(),
        Some("team-a"),
        vec![series(&[("__name__", "up")], &[(now, 1.0)])],
    );
    assert_eq!(code, 200, "{body}");
    let query = |start: i64, end: i64| {
        let mut store = rx.store();
        let v = store
            .label_values(pb::LabelValuesRequest {
                label: "tenant_id".into(),
                start,
                end,
                ..Default::default()
            })
            .expect("label values")
            .values;
        let n = store
            .label_names(pb::LabelNamesRequest {
                start,
                end,
                ..Default::default()
            })
            .expect("label names")
            .names;
        (v, n)
    };
    let (values, names) = query(now - 10_000, now);
    assert_eq!(values, s(&["team-a"]));
    assert!(names.contains(&"tenant_id".to_string()), "{names:?}");
    assert_eq!(query(0, i64::MAX).0, s(&["default-tenant", "team-a"]));
    // A window that ends before every sample: no tenant answers.
    let (values, names) = query(0, now - 10_000);
    assert!(
        values.is_empty() && names.is_empty(),
        "{values:?} {names:?}"
    );
}
