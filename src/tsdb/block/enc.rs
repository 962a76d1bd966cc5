//! Byte-level primitives shared by the index, chunk and tombstone formats (tsdb-format.md §0):
//! Go-compatible varints, big-endian integers, CRC-32C, positional reads, and a bounds-checked
//! cursor whose errors name the file and the absolute offset of the bad bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::BlockError;

pub(super) fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push(x as u8 | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

pub(super) fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, ((x << 1) ^ (x >> 63)) as u64);
}

pub(super) fn put_uvarint_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

pub(super) fn uvarint_len(mut x: u64) -> usize {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

/// Go `binary.Uvarint`: the value and the bytes it used, or None when `b` ends inside the varint
/// or the varint overflows 64 bits (Go's rule: a 10th byte may only be 0 or 1).
pub(crate) fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            return Some((x | u64::from(byte) << (7 * i), i + 1));
        }
        x |= u64::from(byte & 0x7f) << (7 * i);
    }
    None
}

pub(super) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub(super) fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BlockError + 'a {
    move |source| BlockError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> BlockError {
    BlockError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Reads exactly `len` bytes at `off`. Callers check `off + len` against the file size first,
/// so the allocation is bounded by what is on disk.
pub(super) fn read_at(
    file: &File,
    path: &Path,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)
        .map_err(io_err("read", path))?;
    Ok(buf)
}

/// Cursor over bytes that came from `file` starting at absolute offset `base`.
pub(super) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    file: &'a Path,
}

impl<'a> Dec<'a> {
    pub(super) fn new(buf: &'a [u8], base: u64, file: &'a Path) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            file,
        }
    }

    pub(super) fn corrupt(&self, reason: impl Into<String>) -> BlockError {
        corrupt(self.file, self.offset(), reason)
    }

    pub(super) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], BlockError> {
        if n > self.remaining() {
            return Err(self.corrupt(format!("{what}: need {n} bytes, {} left", self.remaining())));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    pub(super) fn be32(&mut self, what: &str) -> Result<u32, BlockError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn uvarint(&mut self, what: &str) -> Result<u64, BlockError> {
        match uvarint(&self.buf[self.pos..]) {
            Some((x, n)) => {
                self.pos += n;
                Ok(x)
            }
            None => Err(self.corrupt(format!("{what}: truncated or overlong varint"))),
        }
    }

    pub(super) fn uvarint32(&mut self, what: &str) -> Result<u32, BlockError> {
        let at = self.offset();
        let x = self.uvarint(what)?;
        u32::try_from(x).map_err(|_| corrupt(self.file, at, format!("{what}: {x} exceeds 32 bits")))
    }

    pub(super) fn varint(&mut self, what: &str) -> Result<i64, BlockError> {
        let z = self.uvarint(what)?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    /// A uvarint-prefixed UTF-8 string.
    pub(super) fn str(&mut self, what: &str) -> Result<&'a str, BlockError> {
        let at = self.offset();
        let n = self.uvarint(what)?;
        let n = usize::try_from(n)
            .map_err(|_| corrupt(self.file, at, format!("{what}: length {n}")))?;
        let b = self.bytes(n, what)?;
        std::str::from_utf8(b)
            .map_err(|_| corrupt(self.file, at, format!("{what}: not valid UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_go() {
        for x in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, x);
            assert_eq!(b.len(), uvarint_len(x));
            assert_eq!(uvarint(&b), Some((x, b.len())));
        }
        // Go rejects a 10th byte above 1 and a varint running past 10 bytes.
        assert_eq!(
            uvarint(&[0xff; 9].iter().copied().chain([2]).collect::<Vec<_>>()),
            None
        );
        assert_eq!(uvarint(&[0x80]), None);
        for x in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, x);
            assert_eq!(Dec::new(&b, 0, Path::new("t")).varint("x").unwrap(), x);
        }
        assert_eq!(crc(b"123456789"), 0xE306_9283);
    }
}
