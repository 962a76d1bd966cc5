//! Hostile and costly StoreAPI requests against a real receiver over real gRPC: regexes over
//! the length and compiled-size bounds, echoed values that would overflow a client's 16 KiB
//! metadata limit, the ABORT strategy with matchers only on external labels, and costly regex
//! queries running beside Info.
//!
//! Nothing here passes or fails on a duration: under load the tests assert what the server did
//! (codes, message sizes, how many queries ran at once), and only print latencies.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wharf::proto::thanos::{self as pb, label_matcher::Type};

const MIN_TIME: i64 = 0;
const MAX_TIME: i64 = 253_402_300_799_000;
/// Longest gRPC error message accepted here: a few hundred bytes of text plus a bounded echo.
const MESSAGE_MAX: usize = 1024;

fn store_with(n: usize) -> Receiver {
    let rx = Receiver::start(&["--label", "region=\"eu-west\""]);
    let now = now_ms();
    let values: Vec<String> = (0..n).map(|i| format!("pod-{i:05}-abcdefgh")).collect();
    let ts = values
        .iter()
        .map(|v| series(&[("__name__", "up"), ("pod", v)], &[(now, 1.0)]))
        .collect();
    let (code, body) = write(rx.rw(), None, ts);
    assert_eq!(code, 200, "{body}");
    rx
}

fn series_req(matchers: Vec<pb::LabelMatcher>) -> pb::SeriesRequest {
    pb::SeriesRequest {
        min_time: MIN_TIME,
        max_time: MAX_TIME,
        matchers,
        skip_chunks: true,
        ..Default::default()
    }
}

fn assert_bounded_invalid(what: &str, err: &tonic::Status, must_contain: &str) {
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{what}: {}",
        &err.message()[..err.message().len().min(300)]
    );
    assert!(
        err.message().len() < MESSAGE_MAX,
        "{what}: message of {} bytes",
        err.message().len()
    );
    assert!(
        err.message().contains(must_contain),
        "{what}: {:?} lacks {must_contain:?}",
        err.message()
    );
}

/// A 1 MiB regex is refused before it is parsed, naming the length limit, and neither it nor a
/// 1 MiB label name comes back whole, on all three StoreAPI calls.
#[test]
fn over_long_regexes_are_invalid_argument_naming_the_limit_in_a_short_message() {
    let rx = store_with(3);
    let mut store = rx.store();
    let mib = 1 << 20;
    // Valid syntax, costly to parse: what the issue sent eight times at once.
    let valid_long: String = (0..mib / 8).map(|i| format!("a{i:06}|")).collect();
    let invalid_long = format!("({}", "a".repeat(mib));
    let long_name = "n".repeat(mib);
    let cases = [
        ("valid 1 MiB regex", Type::Re, "pod", valid_long.as_str()),
        (
            "invalid 1 MiB regex",
            Type::Re,
            "pod",
            invalid_long.as_str(),
        ),
        (
            "invalid 1 MiB !~ regex",
            Type::Nre,
            "pod",
            invalid_long.as_str(),
        ),
        (
            "1 MiB name, 1 MiB regex",
            Type::Re,
            long_name.as_str(),
            invalid_long.as_str(),
        ),
    ];
    for (what, kind, name, value) in cases {
        let ms = vec![eq("__name__", "up"), matcher(kind, name, value)];
        let err = store.series(series_req(ms.clone())).unwrap_err();
        assert_bounded_invalid(what, &err, "65536");
        let err = store
            .label_names(pb::LabelNamesRequest {
                start: MIN_TIME,
                end: MAX_TIME,
                matchers: ms.clone(),
                ..Default::default()
            })
            .unwrap_err();
        assert_bounded_invalid(what, &err, "65536");
        let err = store
            .label_values(pb::LabelValuesRequest {
                label: "pod".into(),
                start: MIN_TIME,
                end: MAX_TIME,
                matchers: ms,
                ..Default::default()
            })
            .unwrap_err();
        assert_bounded_invalid(what, &err, "65536");
    }
}

/// Under the length limit, a syntax error keeps what is wrong but not the pattern (the regex
/// crate's own message repeats all of it), and a short pattern with a huge program is refused
/// naming the compiled-size limit.
#[test]
fn syntax_and_compiled_size_errors_are_invalid_argument_in_a_short_message() {
    let rx = store_with(3);
    let mut store = rx.store();
    let invalid = format!("({}", "a".repeat(60_000));
    let err = store
        .series(series_req(vec![matcher(Type::Re, "pod", &invalid)]))
        .unwrap_err();
    assert_bounded_invalid("60 KB invalid regex", &err, "unclosed group");
    let err = store
        .series(series_req(vec![matcher(Type::Re, "pod", r"\w{100}")]))
        .unwrap_err();
    assert_bounded_invalid("huge compiled program", &err, "4194304");
    // The server still answers.
    let (out, warnings) = store
        .series(series_req(vec![eq("__name__", "up")]))
        .expect("series");
    assert_eq!((out.len(), warnings.len()), (3, 0));
}

/// Thanos's TSDB store refuses a Series call whose matchers all name external labels with
/// InvalidArgument; its proxy turns that into a warning (WARN) or ABORTED carrying the text
/// (ABORT, or partial responses disabled). Never UNAVAILABLE: a Querier would retry it.
#[test]
fn ext_label_only_series_under_abort_is_aborted_with_thanos_text() {
    let rx = store_with(2);
    let mut store = rx.store();
    let ext_only = vec![eq("region", "eu-west")];
    for (strategy, disabled) in [
        (pb::PartialResponseStrategy::Abort, false),
        (pb::PartialResponseStrategy::Warn, true),
    ] {
        let err = store
            .series(pb::SeriesRequest {
                partial_response_strategy: strategy as i32,
                partial_response_disabled: disabled,
                ..series_req(ext_only.clone())
            })
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Aborted,
            "{strategy:?}/{disabled}: {err:?}"
        );
        assert!(
            err.message()
                .contains("no matchers specified (excluding external labels)"),
            "{:?}",
            err.message()
        );
        assert!(err.message().len() < MESSAGE_MAX);
    }
    // WARN: a warning frame and no series, as before.
    let (out, warnings) = store.series(series_req(ext_only.clone())).expect("series");
    assert!(out.is_empty());
    assert!(warnings
        .iter()
        .any(|w| w.contains("no matchers specified (excluding external labels)")));
    // Thanos's TSDB store answers LabelNames/LabelValues with only external-label matchers (they
    // are dropped once they match); ABORT changes nothing there.
    let abort = pb::PartialResponseStrategy::Abort as i32;
    let names = store
        .label_names(pb::LabelNamesRequest {
            start: MIN_TIME,
            end: MAX_TIME,
            matchers: ext_only.clone(),
            partial_response_strategy: abort,
            ..Default::default()
        })
        .expect("label names under ABORT");
    assert!(names.warnings.is_empty(), "{:?}", names.warnings);
    assert_eq!(names.names, ["__name__", "pod", "region", "tenant_id"]);
    let values = store
        .label_values(pb::LabelValuesRequest {
            label: "pod".into(),
            start: MIN_TIME,
            end: MAX_TIME,
            matchers: ext_only,
            partial_response_strategy: abort,
            ..Default::default()
        })
        .expect("label values under ABORT");
    assert!(values.warnings.is_empty(), "{:?}", values.warnings);
    assert_eq!(values.values.len(), 2);
}

fn scrape(rx: &Receiver) -> String {
    let (code, text) = get(&format!("http://{}/metrics", rx.http())).expect("scrape");
    assert_eq!(code, 200);
    text
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The second call with the same regex reuses the compiled program (counted under Thanos's
/// matcher-cache metric names).
#[test]
fn a_repeated_regex_is_a_matcher_cache_hit() {
    let rx = store_with(3);
    let mut store = rx.store();
    // Unique to this test: the cache and the metrics are process-wide.
    let re = "pod-0000[01]-abcdefgh|cache-hit-test";
    let before = metric(&scrape(&rx), "thanos_matchers_cache_hits_total").unwrap_or(0.0);
    for _ in 0..2 {
        let (out, _) = store
            .series(series_req(vec![matcher(Type::Re, "pod", re)]))
            .expect("series");
        assert_eq!(out.len(), 2);
    }
    let text = scrape(&rx);
    let after = metric(&text, "thanos_matchers_cache_hits_total").expect("hits metric");
    assert!(after > before, "hits {before} -> {after}");
    assert!(metric(&text, "thanos_matchers_cache_requests_total").is_some_and(|r| r >= 2.0));
    assert_eq!(
        metric(&text, "thanos_matchers_cache_max_items"),
        Some(wharf::model::Matcher::CACHE_SLOTS as f64)
    );
}

/// Query slots as the server computes them (one per CPU, 2..=32).
fn query_slots() -> f64 {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 32) as f64
}

/// Eight clients send costly regexes (under the bounds, each compiling to megabytes, each new
/// so the cache cannot help) while Info is called in a loop. Asserted: every Info answers,
/// every Series answers, and no more queries than the slots ever run at once. The Info
/// latencies are printed (`--nocapture`), not asserted.
#[test]
fn info_keeps_answering_while_costly_series_calls_run() {
    let rx = store_with(5_000);
    let grpc = rx.grpc();
    const CLIENTS: usize = 8;
    const CALLS: usize = 1;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (done, accepted) = (done.clone(), accepted.clone());
            std::thread::spawn(move || {
                let mut store = StoreApi::connect(grpc);
                for call in 0..CALLS {
                    // ~21 KB of `.*`-heavy alternatives: accepted (close to the compiled-size
                    // bound), and slow to match: the lazy DFA's cache thrashes on every value.
                    let re: String = (0..1_600)
                        .map(|i| format!("(.*x{c}{call}{i}.*)"))
                        .collect::<Vec<_>>()
                        .join("|");
                    let r = store.series(series_req(vec![
                        eq("__name__", "up"),
                        matcher(Type::Re, "pod", &re),
                    ]));
                    match r {
                        Ok(_) => {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // Over the compiled-size bound is a fine answer too: it is bounded work.
                        Err(e) if e.code() == tonic::Code::InvalidArgument => {}
                        Err(e) => panic!("series: {e:?}"),
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let mut info = rx.store();
    let (mut latencies, mut writes) = (Vec::new(), Vec::new());
    let mut most_running = 0.0f64;
    let mut n = 0;
    while done.load(std::sync::atomic::Ordering::SeqCst) < CLIENTS {
        let t = Instant::now();
        let r = info.info().expect("info during costly queries");
        latencies.push(t.elapsed());
        assert!(!r.label_sets.is_empty());
        n += 1;
        let t = Instant::now();
        let ts = vec![series(
            &[("__name__", "w"), ("n", &n.to_string())],
            &[(now_ms(), 1.0)],
        )];
        assert_eq!(
            write(rx.rw(), None, ts).0,
            200,
            "write during costly queries"
        );
        writes.push(t.elapsed());
        if let Some(running) = metric(&scrape(&rx), "wharf_store_queries_running") {
            most_running = most_running.max(running);
        } else {
            panic!("no wharf_store_queries_running metric");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in clients {
        c.join().expect("client");
    }
    assert!(
        most_running <= query_slots(),
        "{most_running} queries ran at once, over {} slots",
        query_slots()
    );
    let spread = |mut v: Vec<Duration>| {
        v.sort();
        match (v.get(v.len() / 2), v.last()) {
            (Some(m), Some(x)) => format!("{} calls, median {m:?}, max {x:?}", v.len()),
            _ => "no calls".to_string(),
        }
    };
    println!(
        "under load ({} of {} costly Series accepted, at most {most_running} running): Info {}; writes {}",
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        CLIENTS * CALLS,
        spread(latencies),
        spread(writes)
    );
}

/// A tenant whose block index is damaged fails LabelNames and LabelValues. Thanos's proxy
/// passes the store's error on under ABORT (its TSDB store answers INTERNAL for a storage
/// failure) and turns it into a warning under WARN; the failure text stays bounded.
#[test]
fn label_calls_under_abort_fail_with_a_failing_tenant() {
    const RANGE: i64 = 2 * 3600 * 1000;
    const STEP: i64 = 60_000;
    let base = (now_ms() - 3 * 24 * 3600 * 1000) / RANGE * RANGE;
    let rx = Receiver::start(&["--tsdb.compaction-interval", "100ms"]);
    // Four hours: more than 1.5 block ranges, so the oldest two hours are cut into a block.
    let samples: Vec<(i64, f64)> = (0..4 * 60).map(|i| (base + i * STEP, 1.0)).collect();
    let ts = (0..3)
        .map(|i| series(&[("__name__", "up"), ("pod", &format!("p{i}"))], &samples))
        .collect();
    assert_eq!(write(rx.rw(), None, ts).0, 200);
    let tenant = rx.dir.path().join("default-tenant");
    let start = Instant::now();
    let block = loop {
        // Listed only once renamed from its tmp dir, i.e. complete.
        let found = wharf::tsdb::block::list_blocks(&tenant)
            .ok()
            .and_then(|b| b.into_iter().next());
        if let Some(b) = found {
            break b;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no block cut");
        std::thread::sleep(Duration::from_millis(50));
    };
    let dir = rx.stop();
    // Damage the first series entry: its CRC no longer matches, which is read on demand.
    let index = block.join("index");
    let mut bytes = std::fs::read(&index).expect("index");
    let toc = bytes.len() - 52;
    let series_at = u64::from_be_bytes(bytes[toc + 8..toc + 16].try_into().unwrap()) as usize;
    // The section starts where the symbols end; its first entry at the next 16-byte boundary.
    bytes[series_at.next_multiple_of(16) + 3] ^= 0xff;
    std::fs::write(&index, bytes).expect("write index");
    let rx = Receiver::start_in(dir, &["--tsdb.compaction-interval", "1h"]);
    let mut store = rx.store();
    let ms = vec![eq("pod", "p0")];
    let names = |strategy: pb::PartialResponseStrategy| pb::LabelNamesRequest {
        start: i64::MIN,
        end: i64::MAX,
        matchers: ms.clone(),
        partial_response_strategy: strategy as i32,
        ..Default::default()
    };
    let values = |strategy: pb::PartialResponseStrategy| pb::LabelValuesRequest {
        label: "pod".into(),
        start: i64::MIN,
        end: i64::MAX,
        matchers: ms.clone(),
        partial_response_strategy: strategy as i32,
        ..Default::default()
    };
    let warn = store
        .label_names(names(pb::PartialResponseStrategy::Warn))
        .expect("label names under WARN");
    assert_eq!(warn.warnings.len(), 1, "{:?}", warn.names);
    let warn = store
        .label_values(values(pb::PartialResponseStrategy::Warn))
        .expect("label values under WARN");
    assert_eq!(warn.warnings.len(), 1, "{:?}", warn.values);
    for err in [
        store
            .label_names(names(pb::PartialResponseStrategy::Abort))
            .unwrap_err(),
        store
            .label_values(values(pb::PartialResponseStrategy::Abort))
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
        assert!(err.message().contains("default-tenant"), "{err:?}");
        assert!(err.message().len() < MESSAGE_MAX, "{err:?}");
    }
}
