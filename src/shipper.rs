//! Uploads a tenant's blocks to the bucket as Thanos's shipper does, so that Store Gateway and
//! Compactor find them: oldest block first; `chunks/*`, then `index`, then `meta.json` last (a
//! block without `meta.json` in the bucket is a partial upload that readers ignore and the next
//! sync uploads again, whole); then the ULID is recorded in `thanos.shipper.json` (tmp → fsync
//! → rename → fsync dir). The first failure ends the sync, so blocks land in order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::objstore::Bucket;
use crate::telemetry::{self, metrics};
use crate::tsdb::block::{self, BlockMeta};

/// The shipper's record of uploaded blocks, in each tenant's directory.
pub const SHIPPER_FILE: &str = "thanos.shipper.json";

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("read blocks of {dir}: {source}")]
    Blocks {
        dir: PathBuf,
        source: block::BlockError,
    },
    #[error("upload {key}: {source}")]
    Upload {
        key: String,
        source: object_store::Error,
    },
    #[error("read {path} for upload: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} task failed")]
    Task(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct ShipperState {
    version: u32,
    uploaded: Vec<String>,
}

/// ULIDs recorded as uploaded in `dir` (none when the file is missing or unreadable: the bucket
/// check then keeps a block from being uploaded twice). Blocking.
pub fn read_uploaded(dir: &Path) -> HashSet<String> {
    std::fs::read(dir.join(SHIPPER_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ShipperState>(&b).ok())
        .filter(|s| s.version == 1)
        .map(|s| s.uploaded.into_iter().collect())
        .unwrap_or_default()
}

/// Rewrites `thanos.shipper.json` atomically. Blocking.
fn write_uploaded(dir: &Path, uploaded: Vec<String>) -> std::io::Result<()> {
    let state = ShipperState {
        version: 1,
        uploaded,
    };
    let mut json = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut json, fmt);
    state.serialize(&mut ser).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{SHIPPER_FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SHIPPER_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Blocks uploaded now, oldest first.
    pub uploaded: Vec<String>,
    /// Blocks whose `meta.json` was already in the bucket (recorded without uploading).
    pub found: usize,
}

#[derive(Debug)]
pub struct Shipper {
    bucket: Bucket,
}

/// The operations Thanos's objstore metrics name; the shipper performs `exists` and `upload`.
const BUCKET_OPERATIONS: [&str; 7] = [
    "get",
    "get_range",
    "exists",
    "upload",
    "delete",
    "iter",
    "attributes",
];

fn bucket_operation(bucket: &str, operation: &str) -> telemetry::BucketOperation {
    telemetry::BucketOperation {
        bucket: bucket.into(),
        operation: operation.into(),
    }
}

impl Shipper {
    pub fn new(bucket: Bucket) -> Self {
        // Every operation is present from the start, as Thanos's objstore wrapper has them.
        let m = metrics();
        for operation in BUCKET_OPERATIONS {
            let op = bucket_operation(&bucket.name, operation);
            m.bucket_operations.get_or_create(&op).inc_by(0);
            m.bucket_operation_failures.get_or_create(&op).inc_by(0);
        }
        Self { bucket }
    }

    /// Counts one operation on the bucket, and the failure if it failed.
    fn count(&self, operation: &str, ok: bool) {
        let m = metrics();
        let op = bucket_operation(&self.bucket.name, operation);
        m.bucket_operations.get_or_create(&op).inc();
        if !ok {
            m.bucket_operation_failures.get_or_create(&op).inc();
        } else if operation == "upload" {
            m.bucket_last_upload
                .get_or_create(&telemetry::BucketLabel {
                    bucket: self.bucket.name.clone(),
                })
                .set(crate::tsdb::now_ms() as f64 / 1000.0);
        }
    }

    /// Uploads every block of `dir` not uploaded yet, oldest first; stops at the first failure.
    pub async fn sync(&self, tenant: &str, dir: &Path) -> Result<SyncStats, ShipperError> {
        let m = metrics();
        let t = telemetry::tenant(tenant);
        m.shipper_dir_syncs.get_or_create(&t).inc();
        // At 0 until the first upload, so that an alert on no uploads can fire.
        m.shipper_uploads.get_or_create(&t).inc_by(0);
        m.shipper_upload_failures.get_or_create(&t).inc_by(0);
        let res = self.sync_inner(tenant, dir).await;
        if res.is_err() {
            m.shipper_dir_sync_failures.get_or_create(&t).inc();
        }
        res
    }

    async fn sync_inner(&self, tenant: &str, dir: &Path) -> Result<SyncStats, ShipperError> {
        let d = dir.to_path_buf();
        let (blocks, mut uploaded) = tokio::task::spawn_blocking(move || {
            let blocks = block::list_blocks(&d).map_err(|source| ShipperError::Blocks {
                dir: d.clone(),
                source,
            })?;
            let metas = blocks
                .into_iter()
                .map(|p| {
                    block::read_meta(&p)
                        .map(|m| (p.clone(), m))
                        .map_err(|source| ShipperError::Blocks { dir: p, source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, ShipperError>((metas, read_uploaded(&d)))
        })
        .await
        .map_err(|_| ShipperError::Task("list blocks"))??;
        let mut stats = SyncStats::default();
        let local: Vec<String> = blocks.iter().map(|(_, m)| m.ulid.clone()).collect();
        for (path, meta) in blocks {
            // Empty blocks and compacted ones are not the receiver's to upload.
            if uploaded.contains(&meta.ulid)
                || meta.stats.num_samples == 0
                || meta.compaction.level > 1
            {
                continue;
            }
            let meta_key = ObjectPath::from(format!("{}/meta.json", meta.ulid));
            let found = self.bucket.store.head(&meta_key).await;
            // A missing object is an answer, not a failure.
            self.count(
                "exists",
                matches!(found, Ok(_) | Err(object_store::Error::NotFound { .. })),
            );
            match found {
                Ok(_) => stats.found += 1,
                Err(object_store::Error::NotFound { .. }) => {
                    self.upload_block(tenant, &path, meta.clone()).await?;
                    stats.uploaded.push(meta.ulid.clone());
                }
                Err(source) => {
                    return Err(ShipperError::Upload {
                        key: meta_key.to_string(),
                        source,
                    })
                }
            }
            uploaded.insert(meta.ulid.clone());
            // The record lists blocks still present locally, as Thanos rebuilds it.
            let list: Vec<String> = local
                .iter()
                .filter(|u| uploaded.contains(*u))
                .cloned()
                .collect();
            let d = dir.to_path_buf();
            tokio::task::spawn_blocking(move || write_uploaded(&d, list))
                .await
                .map_err(|_| ShipperError::Task("write shipper file"))?
                .map_err(|source| ShipperError::State {
                    path: dir.join(SHIPPER_FILE),
                    source,
                })?;
        }
        Ok(stats)
    }

    async fn upload_block(
        &self,
        tenant: &str,
        dir: &Path,
        mut meta: BlockMeta,
    ) -> Result<(), ShipperError> {
        let started = Instant::now();
        let t = telemetry::tenant(tenant);
        let res = async {
            let mut files = Vec::new();
            let chunks = dir.join("chunks");
            let mut entries =
                tokio::fs::read_dir(&chunks)
                    .await
                    .map_err(|source| ShipperError::Read {
                        path: chunks.clone(),
                        source,
                    })?;
            while let Some(e) = entries
                .next_entry()
                .await
                .map_err(|source| ShipperError::Read {
                    path: chunks.clone(),
                    source,
                })?
            {
                files.push(format!("chunks/{}", e.file_name().to_string_lossy()));
            }
            files.sort();
            files.push("index".into());
            let mut bytes = 0u64;
            for rel in &files {
                bytes += self.upload_file(&dir.join(rel), &meta.ulid, rel).await?;
            }
            crate::tsdb::failpoint("shipper-before-meta");
            if let Some(th) = meta.thanos.as_mut() {
                th.upload_time = Some(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                );
            }
            let json = serde_json::to_vec_pretty(&meta).map_err(|e| ShipperError::Read {
                path: dir.join("meta.json"),
                source: std::io::Error::other(e),
            })?;
            bytes += json.len() as u64;
            let key = ObjectPath::from(format!("{}/meta.json", meta.ulid));
            let put = self
                .bucket
                .store
                .put_opts(&key, json.into(), self.put_options())
                .await;
            self.count("upload", put.is_ok());
            put.map_err(|source| ShipperError::Upload {
                key: key.to_string(),
                source,
            })?;
            crate::tsdb::failpoint("shipper-after-meta");
            Ok::<_, ShipperError>(bytes)
        }
        .await;
        let m = metrics();
        match res {
            Ok(bytes) => {
                m.shipper_uploads.get_or_create(&t).inc();
                m.shipper_upload_bytes.get_or_create(&t).inc_by(bytes);
                m.shipper_upload_duration
                    .get_or_create(&t)
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(
                    tenant,
                    ulid = %meta.ulid,
                    bucket = %self.bucket.name,
                    bytes,
                    duration = ?started.elapsed(),
                    "block uploaded"
                );
                Ok(())
            }
            Err(e) => {
                m.shipper_upload_failures.get_or_create(&t).inc();
                tracing::error!(tenant, ulid = %meta.ulid, bucket = %self.bucket.name, error = %e, "block upload failed; will retry");
                Err(e)
            }
        }
    }

    fn put_options(&self) -> object_store::PutOptions {
        let mut attributes = object_store::Attributes::new();
        for (k, v) in &self.bucket.metadata {
            attributes.insert(
                object_store::Attribute::Metadata(k.clone().into()),
                v.clone().into(),
            );
        }
        object_store::PutOptions {
            attributes,
            ..Default::default()
        }
    }

    /// Streams one file into `<ulid>/<rel>`: a plain PUT below the part size, multipart above.
    async fn upload_file(&self, path: &Path, ulid: &str, rel: &str) -> Result<u64, ShipperError> {
        let key = ObjectPath::from(format!("{ulid}/{rel}"));
        let read_err = |source| ShipperError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let size = file.metadata().await.map_err(read_err)?.len();
        let capacity = self.bucket.part_size.clamp(5 << 20, 1 << 30);
        let mut w = object_store::buffered::BufWriter::with_capacity(
            self.bucket.store.clone(),
            key.clone(),
            capacity,
        )
        .with_attributes(self.put_options().attributes);
        let copied = tokio::io::copy(&mut file, &mut w).await;
        let closed = match copied {
            Ok(_) => w.shutdown().await,
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        };
        self.count("upload", closed.is_ok());
        closed.map_err(|e| ShipperError::Upload {
            key: key.to_string(),
            source: object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            },
        })?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_above_the_part_size_go_up_in_parts_intact() {
        let dir = tempfile::tempdir().unwrap();
        let bucket_dir = dir.path().join("bucket");
        let yaml = format!(
            "type: FILESYSTEM\nconfig:\n  directory: {}\n",
            bucket_dir.display()
        );
        let mut bucket = crate::objstore::from_yaml(&yaml).unwrap();
        bucket.part_size = 5 << 20;
        let shipper = Shipper::new(bucket);
        // 12 MiB of non-repeating bytes: three parts of 5, 5 and 2 MiB.
        let data: Vec<u8> = (0..12u32 << 18).flat_map(|i| i.to_le_bytes()).collect();
        let file = dir.path().join("000001");
        std::fs::write(&file, &data).unwrap();
        let n = shipper
            .upload_file(&file, "01ULID", "chunks/000001")
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        let got = std::fs::read(bucket_dir.join("01ULID/chunks/000001")).unwrap();
        assert!(got == data, "uploaded bytes differ");
    }

    #[test]
    fn shipper_file_round_trips_in_thanos_format() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_uploaded(dir.path()).is_empty());
        write_uploaded(dir.path(), vec!["01A".into(), "01B".into()]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SHIPPER_FILE)).unwrap();
        assert_eq!(
            text,
            "{\n\t\"version\": 1,\n\t\"uploaded\": [\n\t\t\"01A\",\n\t\t\"01B\"\n\t]\n}"
        );
        let got = read_uploaded(dir.path());
        assert!(got.contains("01A") && got.contains("01B") && got.len() == 2);
        std::fs::write(
            dir.path().join(SHIPPER_FILE),
            "{\"version\":2,\"uploaded\":[\"x\"]}",
        )
        .unwrap();
        assert!(
            read_uploaded(dir.path()).is_empty(),
            "unknown versions are not trusted"
        );
    }
}
