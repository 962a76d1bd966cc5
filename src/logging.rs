//! Log setup: `--log.level` and `--log.format` (logfmt, as Thanos prints, or json).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid --log.level {0:?}: {1}")]
    Level(String, String),
    #[error("logger already set: {0}")]
    Init(String),
}

pub fn init(level: &str, format: LogFormat) -> Result<(), LoggingError> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| LoggingError::Level(level.into(), e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    };
    res.map_err(|e| LoggingError::Init(e.to_string()))
}

/// `ts=… level=… msg="…" key=value …`, one line per event.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let mut v = Fields::default();
        event.record(&mut v);
        write!(
            w,
            "ts={ts} level={level} caller={}",
            event.metadata().target()
        )?;
        write!(w, " msg={}", quote(&v.msg))?;
        w.write_str(&v.rest)?;
        writeln!(w)
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, value: &str) {
        if f.name() == "message" {
            self.msg = value.to_string();
        } else {
            let _ = write!(self.rest, " {}={}", f.name(), quote(value));
        }
    }

    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(f, &format!("{value:?}"));
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=')
    {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}
