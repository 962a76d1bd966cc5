//! Series of avalanche's shape (prometheus-community/avalanche, `metrics/serve.go`), which the Go
//! module proxy does not serve: `avalanche_metric_<m×5>_<metric cycle>_<i>` gauges with labels
//! `series_id`, `cycle_id` and ten `label_key_<k×5>_<j>="label_val_<v×5>_<j>"`, values 0–99 that
//! change every value interval. Shared by the load generator (`--shape avalanche`,
//! `--serve-metrics`) and the interop tests (`#[path]`), so both send the same series.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// avalanche's defaults for the lengths and the label count.
pub const METRIC_LENGTH: usize = 5;
pub const LABEL_LENGTH: usize = 5;
pub const LABEL_COUNT: usize = 10;

#[derive(Debug, Clone, Copy)]
pub struct Avalanche {
    /// `--metric-count`.
    pub metrics: usize,
    /// `--series-count`: series per metric.
    pub series_per_metric: usize,
}

impl Avalanche {
    pub fn series(&self) -> usize {
        self.metrics * self.series_per_metric
    }

    /// Labels of series `s` (metric `s % metrics`, series id `s / metrics`) in series cycle
    /// `cycle`, sorted by name as remote write requires.
    pub fn labels(&self, s: usize, cycle: u64) -> Vec<(String, String)> {
        let (m, id) = (s % self.metrics, s / self.metrics);
        let mut l = Vec::with_capacity(3 + LABEL_COUNT);
        l.push(("__name__".to_string(), metric_name(m)));
        l.push(("cycle_id".to_string(), cycle.to_string()));
        for j in 0..LABEL_COUNT {
            l.push(label_pair(j));
        }
        l.push(("series_id".to_string(), id.to_string()));
        l.sort();
        l
    }

    /// Value of series `s` in value tick `tick`: 0–99, as avalanche's `Intn(100)`.
    pub fn value(s: usize, tick: u64) -> f64 {
        let mut x = (s as u64) << 32 ^ tick;
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((x ^ (x >> 31)) % 100) as f64
    }

    /// The `/metrics` page at value tick `tick` (text exposition format 0.0.4).
    pub fn render(&self, tick: u64, out: &mut String) {
        let pairs: String = (0..LABEL_COUNT)
            .map(|j| {
                let (k, v) = label_pair(j);
                format!(",{k}=\"{v}\"")
            })
            .collect();
        for m in 0..self.metrics {
            let name = metric_name(m);
            let _ = writeln!(out, "# HELP {name} A tasty metric morsel");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for id in 0..self.series_per_metric {
                let v = Self::value(id * self.metrics + m, tick);
                let _ = writeln!(
                    out,
                    "{name}{{series_id=\"{id}\",cycle_id=\"0\"{pairs}}} {v}"
                );
            }
        }
    }

    /// Serves the page on `listener` until the process ends, one thread per connection; values
    /// change every `value_interval` of wall-clock time.
    pub fn serve(self, listener: TcpListener, value_interval: Duration) {
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = self.answer(conn, value_interval);
                });
            }
        });
    }

    fn answer(&self, conn: TcpStream, value_interval: Duration) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut writer = conn;
        loop {
            // A request head; its path is not looked at (everything is /metrics).
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "\r\n" && !first {
                    break;
                }
                first = false;
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let tick = now.as_millis() as u64 / value_interval.as_millis().max(1) as u64;
            let mut body = String::with_capacity(self.series() * 200);
            self.render(tick, &mut body);
            write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            writer.write_all(body.as_bytes())?;
        }
    }
}

fn metric_name(m: usize) -> String {
    format!("avalanche_metric_{}_0_{m}", "m".repeat(METRIC_LENGTH))
}

fn label_pair(j: usize) -> (String, String) {
    (
        format!("label_key_{}_{j}", "k".repeat(LABEL_LENGTH)),
        format!("label_val_{}_{j}", "v".repeat(LABEL_LENGTH)),
    )
}
