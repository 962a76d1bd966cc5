// TEMPORARY STUB (being replaced by the real WAL)
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum WalError { #[error("closed")] Closed }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalSync { #[default] Os, Always }
#[derive(Debug, Clone, Default)]
pub struct WalOptions { pub segment_size: u64, pub compression: bool, pub sync: WalSync }
impl WalOptions { pub fn validate(&self) -> Result<(), WalError> { Ok(()) } }
#[derive(Debug, Default, Clone)]
pub struct ReplayStats { pub segments: u32, pub records: u64, pub bytes: u64, pub torn: Option<TornTail> }
#[derive(Debug, Clone)]
pub struct TornTail { pub segment: u32, pub offset: u64, pub reason: String, pub segments_removed: u32 }
pub fn replay<E: std::fmt::Display>(_dir: &Path, _f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<ReplayStats, WalError> { todo!() }
#[derive(Debug)]
pub struct Wal;
impl Wal {
    pub fn open(_dir: &Path, _o: WalOptions) -> Result<Wal, WalError> { todo!() }
    pub fn log(&mut self, _r: &[&[u8]]) -> Result<(), WalError> { todo!() }
    pub fn close(self) -> Result<(), WalError> { todo!() }
}
pub mod record {
    pub const SERIES: u8 = 1; pub const SAMPLES: u8 = 2;
    #[derive(Debug, Clone, Copy, PartialEq)] pub struct RefSample { pub series_ref: u64, pub t: i64, pub v: f64 }
    #[derive(Debug, Clone, PartialEq)] pub struct RefSeries<'a> { pub series_ref: u64, pub labels: Vec<(&'a str, &'a str)> }
    pub fn begin_series(_buf: &mut Vec<u8>) { todo!() }
    pub fn push_series<'a>(_buf: &mut Vec<u8>, _r: u64, _l: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) { todo!() }
    pub fn encode_samples(_buf: &mut Vec<u8>, _s: &[RefSample]) { todo!() }
    pub fn record_type(_rec: &[u8]) -> Option<u8> { todo!() }
    pub fn decode_series<'a>(_rec: &'a [u8], _out: &mut Vec<RefSeries<'a>>) -> Result<(), super::WalError> { todo!() }
    pub fn decode_samples(_rec: &[u8], _out: &mut Vec<RefSample>) -> Result<(), super::WalError> { todo!() }
}
