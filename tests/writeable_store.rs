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
