//! Resident memory per active series in the head: N series of ~10 labels, one sample every
//! 15 s for `--samples` rounds, RSS read from /proc before and after.
//!
//! `cargo bench --bench head_memory -- --series 1000000 --samples 8`; under `cargo test --benches`
//! it runs a small smoke size.

use wharf::tsdb::head::{Head, HeadOptions};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = arg("--series", if bench { 1_000_000 } else { 10_000 });
    let rounds = arg("--samples", if bench { 8 } else { 2 }) as i64;
    let before = rss_bytes();
    let mut head = Head::new(HeadOptions::default());
    let mut ids = Vec::with_capacity(n);
    let t0 = 1_700_000_000_000i64;
    for i in 0..n {
        let name = format!("node_metric_{}", i % 200);
        let inst = format!(
            "ip-10-{}-{}-{}.eu-west-1.compute.internal:9100",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        );
        let pod = format!("node-exporter-{:05x}", i / 100);
        let dev = format!("eth{}", i % 4);
        let labels = [
            ("__name__", name.as_str()),
            ("cluster", "prod-eu-west-1"),
            ("container", "node-exporter"),
            ("device", dev.as_str()),
            ("endpoint", "https-metrics"),
            ("instance", inst.as_str()),
            ("job", "node-exporter"),
            ("namespace", "monitoring"),
            ("pod", pod.as_str()),
            ("service", "node-exporter"),
        ];
        let (id, _) = head.get_or_create(&labels);
        head.mark_logged(id);
        ids.push(id);
    }
    for r in 0..rounds {
        for (i, &id) in ids.iter().enumerate() {
            head.append(id, t0 + r * 15_000, (i as i64 * 7 + r) as f64);
        }
    }
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "series={n} samples_per_series={rounds} rss_delta_bytes={} bytes_per_series={per:.0}",
        after - before
    );
    assert_eq!(head.num_series(), n);
}
