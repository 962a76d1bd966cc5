//! `thanos.WriteableStore/RemoteWrite` as a Thanos router calls it: one tenant per request in
//! fields 1–3 (releases up to v0.42), or several in field 4 (`timeseriesTenantData`, main).

mod common;

use common::*;
use wharf::proto::thanos::{self as pb, writeable_store_client::WriteableStoreClient};

fn remote_write(rx: &Receiver, req: pb::WriteRequest) -> Result<(), tonic::Status> {
    let addr = rx.grpc();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut c = WriteableStoreClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        c.remote_write(req).await.map(|_| ())
    })
}

fn tenant_series(rx: &Receiver, tenant: &str) -> Vec<(Series, Vec<(i64, u64)>)> {
    let (out, _) = rx
        .store()
        .series(pb::SeriesRequest {
            min_time: i64::MIN,
            max_time: i64::MAX,
            matchers: vec![
                eq("tenant_id", tenant),
                matcher(pb::label_matcher::Type::Re, "__name__", ".+"),
            ],
            without_replica_labels: vec!["tenant_id".into(), "receive_replica".into()],
            ..Default::default()
        })
        .expect("series");
    out.iter().map(|s| (pairs(s), samples(s))).collect()
}

#[test]
fn replicated_writes_land_in_their_tenants() {
    let rx = Receiver::start(&[]);
    remote_write(
        &rx,
        pb::WriteRequest {
            timeseries: vec![series(&[("__name__", "a")], &[(1000, 1.0)])],
            tenant: "t1".into(),
            replica: 1,
            ..Default::default()
        },
    )
    .expect("fields 1-3");
    remote_write(
        &rx,
        pb::WriteRequest {
            timeseries_tenant_data: vec![
                pb::TimeSeriesTenantTuple {
                    timeseries: vec![series(&[("__name__", "b")], &[(2000, 2.0)])],
                    tenant: "t2".into(),
                },
                pb::TimeSeriesTenantTuple {
                    timeseries: vec![series(&[("__name__", "c")], &[(3000, 3.0)])],
                    tenant: "t3".into(),
                },
            ],
            ..Default::default()
        },
    )
    .expect("field 4");
    let one = |name: &str, t: i64, v: f64| {
        vec![(
            vec![("__name__".to_string(), name.to_string())],
            vec![(t, v.to_bits())],
        )]
    };
    assert_eq!(tenant_series(&rx, "t1"), one("a", 1000, 1.0));
    assert_eq!(tenant_series(&rx, "t2"), one("b", 2000, 2.0));
    assert_eq!(tenant_series(&rx, "t3"), one("c", 3000, 3.0));

    // Conflicts come back as AlreadyExists, bad tenants as InvalidArgument, as Thanos peers expect.
    let conflict = pb::WriteRequest {
        timeseries: vec![series(&[("__name__", "a")], &[(1000, 5.0)])],
        tenant: "t1".into(),
        ..Default::default()
    };
    assert_eq!(
        remote_write(&rx, conflict).unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    let bad = pb::WriteRequest {
        timeseries: vec![series(&[("__name__", "a")], &[(1, 1.0)])],
        tenant: "../x".into(),
        ..Default::default()
    };
    assert_eq!(
        remote_write(&rx, bad).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

/// A router's forwarded write, encoded by Wharf's replication client and compressed with gRPC's
/// `snappy` encoding as Thanos routers send it by default, including a -0 sample.
#[test]
fn snappy_compressed_forwarded_writes_are_accepted() {
    use wharf::peer::{encode_request, Compression, Options, Peers};
    let rx = Receiver::start(&[]);
    let ts: Vec<_> = (0..500)
        .map(|i| {
            series(
                &[("__name__", "fwd"), ("i", &format!("{i:04}"))],
                &[(1000, if i == 0 { -0.0 } else { i as f64 })],
            )
        })
        .collect();
    let batch = wharf::remote_write::from_timeseries(&ts);
    let all: Vec<u32> = (0..ts.len() as u32).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for compression in [Compression::Snappy, Compression::None] {
        let peers = Peers::new(Options {
            compression,
            ..Options::default()
        });
        let addr = rx.grpc().to_string();
        let body = encode_request("snappy-tenant", 1, &batch, &all, compression);
        rt.block_on(peers.write(&addr, body, false))
            .unwrap_or_else(|e| panic!("{compression:?}: {e}"));
    }
    let got = tenant_series(&rx, "snappy-tenant");
    assert_eq!(got.len(), 500);
    assert_eq!(got[0].1, vec![(1000, (-0.0f64).to_bits())]);
    assert_eq!(got[499].1, vec![(1000, 499f64.to_bits())]);

    // An unreachable peer is reported as unavailable, then failed fast while backing off.
    let peers = Peers::new(Options::default());
    let dead = free_port().to_string();
    let body = encode_request("snappy-tenant", 1, &batch, &all, Compression::Snappy);
    let first = rt.block_on(peers.write(&dead, body.clone(), false));
    assert!(
        matches!(first, Err(wharf::peer::PeerError::Unavailable { .. })),
        "{first:?}"
    );
    let second = rt.block_on(peers.write(&dead, body, false));
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.to_string().contains("backing off")),
        "{second:?}"
    );
}

/// Bodies a peer could send that are not one readable message get a gRPC error each, and the
/// server keeps serving.
#[test]
fn unreadable_forwarded_bodies_get_grpc_errors() {
    use tonic::codegen::http;
    use tonic::Code;
    let rx = Receiver::start(&[]);
    let addr = rx.grpc();
    let frame = |flag: u8, msg: &[u8]| {
        let mut v = vec![flag];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    };
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        (
            "snappy",
            frame(1, b"not snappy frames"),
            Code::InvalidArgument,
        ),
        (
            "identity",
            frame(1, b"flagged, not declared"),
            Code::InvalidArgument,
        ),
        ("identity", vec![0, 0, 0], Code::InvalidArgument),
        ("identity", frame(0, b"\x0a\xff\x01"), Code::InvalidArgument),
        ("gzip", frame(0, b""), Code::Unimplemented),
        ("identity", frame(0, b""), Code::Ok),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        for (encoding, body, want) in cases {
            let req = http::Request::builder()
                .method("POST")
                .uri("/thanos.WriteableStore/RemoteWrite")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-encoding", encoding)
                .body(tonic::body::boxed(http_body_util::Full::new(
                    bytes::Bytes::from(body.clone()),
                )))
                .unwrap();
            std::future::poll_fn(|cx| tower::Service::poll_ready(&mut ch, cx))
                .await
                .unwrap();
            let resp = tower::Service::call(&mut ch, req).await.expect("answer");
            let got = match tonic::Status::from_header_map(resp.headers()) {
                Some(s) => s,
                None => {
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .expect("body");
                    body.trailers()
                        .and_then(tonic::Status::from_header_map)
                        .expect("grpc-status")
                }
            };
            assert_eq!(got.code(), want, "{encoding} {body:?}: {}", got.message());
        }
    });
}
