//! Object storage from the Thanos objstore YAML (`type`, `config`, `prefix`), as
//! `--objstore.config[-file]` gives it, opened through the `object_store` crate: S3 (and
//! S3-compatible servers such as MinIO), GCS, Azure Blob and a local directory. Keys Thanos
//! knows but this build cannot honour are refused by name rather than silently ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ObjstoreError {
    #[error("objstore config: {0}")]
    Yaml(String),
    #[error("objstore config: unknown bucket type {0:?} (want S3, GCS, AZURE or FILESYSTEM)")]
    UnknownType(String),
    #[error("objstore config ({kind}): {key} is not supported: {why}")]
    Unsupported {
        kind: &'static str,
        key: String,
        why: &'static str,
    },
    #[error("objstore config ({}): {}", .0 .0, .0 .1)]
    Invalid((&'static str, String)),
    #[error("objstore client: {0}")]
    Client(#[from] object_store::Error),
}

/// An opened bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    /// For logs: type, bucket and prefix.
    pub name: String,
    /// Multipart part size for large files (`part_size` on S3).
    pub part_size: usize,
    /// `put_user_metadata`: attached to every object.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct HttpConfig {
    idle_conn_timeout: Option<String>,
    response_header_timeout: Option<String>,
    insecure_skip_verify: bool,
    tls_handshake_timeout: Option<String>,
    expect_continue_timeout: Option<String>,
    max_idle_conns: Option<u64>,
    max_idle_conns_per_host: Option<u64>,
    max_conns_per_host: Option<u64>,
    tls_config: Option<BTreeMap<String, Value>>,
    disable_compression: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct S3Config {
    bucket: String,
    endpoint: String,
    region: String,
    aws_sdk_auth: bool,
    access_key: String,
    secret_key: String,
    session_token: String,
    insecure: bool,
    signature_version2: bool,
    put_user_metadata: BTreeMap<String, String>,
    http_config: HttpConfig,
    trace: BTreeMap<String, Value>,
    list_objects_version: String,
    bucket_lookup_type: Value,
    send_content_md5: Option<bool>,
    disable_multipart: bool,
    part_size: u64,
    sse_config: SseConfig,
    sts_endpoint: String,
    max_retries: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct SseConfig {
    #[serde(rename = "type")]
    kind: String,
    kms_key_id: String,
    kms_encryption_context: BTreeMap<String, String>,
    encryption_key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct GcsConfig {
    bucket: String,
    service_account: String,
    use_grpc: bool,
    grpc_conn_pool_size: u32,
    http_config: HttpConfig,
    chunk_size_bytes: u64,
    max_retries: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct AzureConfig {
    storage_account: String,
    storage_account_key: String,
    storage_connection_string: String,
    container: String,
    endpoint: String,
    user_assigned_id: String,
    max_retries: u32,
    reader_config: Value,
    pipeline_config: Value,
    http_config: HttpConfig,
    msi_resource: String,
    storage_create_container: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FsConfig {
    directory: String,
}

/// Default S3 multipart part size, as Thanos (64 MiB).
const DEFAULT_PART_SIZE: usize = 64 << 20;

fn config<T: for<'de> Deserialize<'de> + Default>(
    kind: &'static str,
    v: Value,
) -> Result<T, ObjstoreError> {
    if v.is_null() {
        return Ok(T::default());
    }
    serde_yaml::from_value(v).map_err(|e| ObjstoreError::Invalid((kind, e.to_string())))
}

fn duration(
    kind: &'static str,
    key: &str,
    v: &Option<String>,
) -> Result<Option<Duration>, ObjstoreError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| ObjstoreError::Invalid((kind, format!("{key}: {e}"))))
        })
        .transpose()
}

fn client_options(kind: &'static str, h: &HttpConfig) -> Result<ClientOptions, ObjstoreError> {
    if h.tls_config.as_ref().is_some_and(|t| {
        t.iter()
            .any(|(k, v)| k != "insecure_skip_verify" && !v.is_null() && v.as_str() != Some(""))
    }) {
        return Err(ObjstoreError::Unsupported {
            kind,
            key: "http_config.tls_config".into(),
            why: "custom CA and client certificates are not supported yet; use the system trust store",
        });
    }
    let skip_verify = h.insecure_skip_verify
        || h.tls_config
            .as_ref()
            .and_then(|t| t.get("insecure_skip_verify"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let mut o = ClientOptions::new().with_allow_invalid_certificates(skip_verify);
    if let Some(d) = duration(kind, "http_config.idle_conn_timeout", &h.idle_conn_timeout)? {
        o = o.with_pool_idle_timeout(d);
    }
    if let Some(d) = duration(
        kind,
        "http_config.response_header_timeout",
        &h.response_header_timeout,
    )? {
        o = o.with_timeout(d);
    }
    if let Some(n) = h.max_idle_conns_per_host {
        o = o.with_pool_max_idle_per_host(n as usize);
    }
    Ok(o)
}

fn retries(n: u32) -> RetryConfig {
    let mut r = RetryConfig::default();
    if n > 0 {
        r.max_retries = n as usize;
    }
    r
}

/// Parses the Thanos objstore YAML and opens the bucket (no request is made yet).
pub fn from_yaml(text: &str) -> Result<Bucket, ObjstoreError> {
    let top: Top = serde_yaml::from_str(text).map_err(|e| ObjstoreError::Yaml(e.to_string()))?;
    let (store, name, part_size, metadata): (Arc<dyn ObjectStore>, String, usize, _) =
        match top.kind.to_ascii_uppercase().as_str() {
            "S3" => s3(config("S3", top.config)?)?,
            "GCS" => gcs(config("GCS", top.config)?)?,
            "AZURE" => azure(config("AZURE", top.config)?)?,
            "FILESYSTEM" => filesystem(config("FILESYSTEM", top.config)?)?,
            _ => return Err(ObjstoreError::UnknownType(top.kind)),
        };
    let prefix = top.prefix.trim_matches('/');
    let (store, name): (Arc<dyn ObjectStore>, String) = if prefix.is_empty() {
        (store, name)
    } else {
        (
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix)),
            format!("{name}/{prefix}"),
        )
    };
    Ok(Bucket {
        store,
        name,
        part_size,
        metadata,
    })
}

type Opened = (
    Arc<dyn ObjectStore>,
    String,
    usize,
    BTreeMap<String, String>,
);

fn s3(c: S3Config) -> Result<Opened, ObjstoreError> {
    const K: &str = "S3";
    let unsupported = |key: &str, why| ObjstoreError::Unsupported {
        kind: K,
        key: key.into(),
        why,
    };
    if c.bucket.is_empty() {
        return Err(ObjstoreError::Invalid((K, "bucket is required".into())));
    }
    if c.signature_version2 {
        return Err(unsupported(
            "signature_version2",
            "only AWS Signature Version 4 is implemented",
        ));
    }
    if !c.sts_endpoint.is_empty() {
        return Err(unsupported(
            "sts_endpoint",
            "a custom STS endpoint is not supported; use the AWS_* environment",
        ));
    }
    if c.trace.get("enable").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported(
            "trace.enable",
            "request tracing is not implemented",
        ));
    }
    let mut b = if c.access_key.is_empty() && c.secret_key.is_empty() {
        // AWS_* variables, web identity (IRSA) and instance metadata, as the AWS SDK chain.
        object_store::aws::AmazonS3Builder::from_env()
    } else if c.access_key.is_empty() || c.secret_key.is_empty() {
        return Err(ObjstoreError::Invalid((
            K,
            "access_key and secret_key must be given together".into(),
        )));
    } else {
        object_store::aws::AmazonS3Builder::new()
            .with_access_key_id(&c.access_key)
            .with_secret_access_key(&c.secret_key)
    };
    b = b.with_bucket_name(&c.bucket);
    if !c.session_token.is_empty() {
        b = b.with_token(&c.session_token);
    }
    b = b.with_region(if c.region.is_empty() {
        "us-east-1"
    } else {
        c.region.as_str()
    });
    if !c.endpoint.is_empty() {
        let url = if c.endpoint.contains("://") {
            c.endpoint.clone()
        } else {
            format!(
                "{}://{}",
                if c.insecure { "http" } else { "https" },
                c.endpoint
            )
        };
        b = b.with_endpoint(url);
    }
    match c.bucket_lookup_type.as_str().unwrap_or("auto") {
        "virtual-hosted" => b = b.with_virtual_hosted_style_request(true),
        "auto" | "path" | "" => {}
        other => {
            return Err(ObjstoreError::Invalid((
                K,
                format!("bucket_lookup_type {other:?} (want auto, virtual-hosted or path)"),
            )))
        }
    }
    match c.sse_config.kind.as_str() {
        "" => {}
        "SSE-S3" => {
            let key: object_store::aws::AmazonS3ConfigKey = "aws_server_side_encryption"
                .parse()
                .map_err(|e: object_store::Error| ObjstoreError::Invalid((K, e.to_string())))?;
            b = b.with_config(key, "AES256")
        }
        "SSE-KMS" if c.sse_config.kms_encryption_context.is_empty() => {
            b = b.with_sse_kms_encryption(&c.sse_config.kms_key_id)
        }
        "SSE-KMS" => {
            return Err(unsupported(
                "sse_config.kms_encryption_context",
                "a KMS encryption context cannot be passed through",
            ))
        }
        _ => {
            return Err(unsupported(
                "sse_config.type",
                "only SSE-S3 and SSE-KMS are supported",
            ))
        }
    }
    // Client options carry `allow_http` too, so they are set whole, once.
    b = b
        .with_client_options(client_options(K, &c.http_config)?.with_allow_http(c.insecure))
        .with_retry(retries(c.max_retries));
    let part_size = if c.disable_multipart {
        usize::MAX
    } else if c.part_size > 0 {
        c.part_size as usize
    } else {
        DEFAULT_PART_SIZE
    };
    let name = format!("s3://{}", c.bucket);
    Ok((Arc::new(b.build()?), name, part_size, c.put_user_metadata))
}

fn gcs(c: GcsConfig) -> Result<Opened, ObjstoreError> {
    const K: &str = "GCS";
    if c.bucket.is_empty() {
        return Err(ObjstoreError::Invalid((K, "bucket is required".into())));
    }
    if c.use_grpc {
        return Err(ObjstoreError::Unsupported {
            kind: K,
            key: "use_grpc".into(),
            why: "only the JSON API is implemented",
        });
    }
    let mut b = if c.service_account.is_empty() {
        object_store::gcp::GoogleCloudStorageBuilder::from_env()
    } else {
        object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_service_account_key(&c.service_account)
    };
    b = b
        .with_bucket_name(&c.bucket)
        .with_client_options(client_options(K, &c.http_config)?)
        .with_retry(retries(c.max_retries));
    let part = if c.chunk_size_bytes > 0 {
        c.chunk_size_bytes as usize
    } else {
        DEFAULT_PART_SIZE
    };
    Ok((
        Arc::new(b.build()?),
        format!("gs://{}", c.bucket),
        part,
        BTreeMap::new(),
    ))
}

fn azure(c: AzureConfig) -> Result<Opened, ObjstoreError> {
    const K: &str = "AZURE";
    if c.storage_account.is_empty() || c.container.is_empty() {
        return Err(ObjstoreError::Invalid((
            K,
            "storage_account and container are required".into(),
        )));
    }
    if !c.storage_connection_string.is_empty() {
        return Err(ObjstoreError::Unsupported {
            kind: K,
            key: "storage_connection_string".into(),
            why: "give storage_account and storage_account_key instead",
        });
    }
    let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_account(&c.storage_account)
        .with_container_name(&c.container);
    if !c.storage_account_key.is_empty() {
        b = b.with_access_key(&c.storage_account_key);
    }
    if !c.user_assigned_id.is_empty() {
        b = b.with_client_id(&c.user_assigned_id);
    }
    if !c.endpoint.is_empty() {
        b = b.with_endpoint(format!("https://{}.{}", c.storage_account, c.endpoint));
    }
    b = b
        .with_client_options(client_options(K, &c.http_config)?)
        .with_retry(retries(c.max_retries));
    let name = format!("azure://{}/{}", c.storage_account, c.container);
    Ok((
        Arc::new(b.build()?),
        name,
        DEFAULT_PART_SIZE,
        BTreeMap::new(),
    ))
}

fn filesystem(c: FsConfig) -> Result<Opened, ObjstoreError> {
    const K: &str = "FILESYSTEM";
    if c.directory.is_empty() {
        return Err(ObjstoreError::Invalid((K, "directory is required".into())));
    }
    std::fs::create_dir_all(&c.directory)
        .map_err(|e| ObjstoreError::Invalid((K, format!("create {}: {e}", c.directory))))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&c.directory)?;
    Ok((
        Arc::new(store),
        format!("file://{}", c.directory),
        DEFAULT_PART_SIZE,
        BTreeMap::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn thanos_yaml_for_each_type() {
        let b = from_yaml(
            "type: s3\nconfig:\n  bucket: blocks\n  endpoint: minio:9000\n  access_key: a\n  secret_key: b\n  insecure: true\n  part_size: 1048576\n  put_user_metadata:\n    team: x\n  http_config:\n    idle_conn_timeout: 1m30s\n    insecure_skip_verify: false\nprefix: /tenant-a/\n",
        )
        .unwrap();
        assert_eq!(b.name, "s3://blocks/tenant-a");
        assert_eq!(b.part_size, 1 << 20);
        assert_eq!(b.metadata.get("team").map(String::as_str), Some("x"));
        let dir = tempfile::tempdir().unwrap();
        let fs = from_yaml(&format!(
            "type: FILESYSTEM\nconfig:\n  directory: {}\n",
            dir.path().join("bucket").display()
        ))
        .unwrap();
        assert!(fs.name.starts_with("file://"));
        assert!(dir.path().join("bucket").is_dir());
        let g = from_yaml("type: GCS\nconfig:\n  bucket: b\n  service_account: ''\n");
        // Without credentials in the environment the GCS builder may refuse; either way the
        // YAML itself was accepted.
        if let Err(e) = g {
            assert!(!e.to_string().contains("unknown"), "{e}");
        }
    }

    #[test]
    fn unknown_and_unsupported_keys_are_named() {
        assert!(err("type: S3\nconfig:\n  bucket: b\n  bukket: c\n").contains("bukket"));
        assert!(
            err("type: S3\nconfig:\n  bucket: b\n  signature_version2: true\n")
                .contains("signature_version2")
        );
        assert!(
            err("type: S3\nconfig:\n  bucket: b\n  sse_config:\n    type: SSE-C\n")
                .contains("sse_config.type")
        );
        assert!(
            err("type: S3\nconfig:\n  bucket: b\n  trace:\n    enable: true\n")
                .contains("trace.enable")
        );
        assert!(err("type: SWIFT\nconfig: {}\n").contains("SWIFT"));
        assert!(err("type: S3\nconfig: {bucket: b}\nextra: 1\n").contains("extra"));
        assert!(err("type: GCS\nconfig:\n  bucket: b\n  use_grpc: true\n").contains("use_grpc"));
        assert!(err("type: S3\nconfig:\n  endpoint: x\n").contains("bucket is required"));
        assert!(err("type: S3\nconfig:\n  bucket: b\n  access_key: a\n").contains("together"));
    }
}
