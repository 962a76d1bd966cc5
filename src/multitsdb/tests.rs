use super::*;
use crate::model::{MatchType, Matcher};

fn options(dir: &std::path::Path, max_tenants: usize, max_open_wals: usize) -> Options {
    Options {
        path: dir.to_path_buf(),
        tsdb: TsdbOptions::default(),
        external_labels: Labels::default(),
        tenant_label: "tenant_id".into(),
        default_tenant: TenantId::new("default-tenant").unwrap(),
        retention_ms: 0,
        keep_blocks: false,
        no_lockfile: false,
        max_tenants,
        max_open_wals,
    }
}

fn write(db: &MultiTsdb, tenant: &str, t: i64) -> Result<AppendResult, MultiTsdbError> {
    let req = crate::remote_write::testing::one_sample("up", t);
    let batch = crate::remote_write::decode(&req).unwrap();
    db.append(&TenantId::new(tenant).unwrap(), &batch)
}

fn open_wals(db: &MultiTsdb) -> usize {
    db.tenants().iter().filter(|t| t.db.wal_is_open()).count()
}

fn samples(db: &MultiTsdb, tenant: &str) -> usize {
    let t = db.get_or_open(&TenantId::new(tenant).unwrap()).unwrap();
    let m = Matcher::new(MatchType::Equal, "__name__", "up").unwrap();
    t.db.select(&[m], i64::MIN, i64::MAX, false)
        .unwrap()
        .iter()
        .map(|(_, c)| c.len())
        .sum()
}

#[test]
fn idle_tenants_wal_files_are_closed_past_the_bound_and_reopen_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::tsdb::now_ms();
    let db = MultiTsdb::open(options(dir.path(), 0, 3)).unwrap();
    for i in 0..10 {
        write(&db, &format!("t{i}"), now).unwrap();
        assert!(open_wals(&db) <= 3, "after tenant {i}: {}", open_wals(&db));
    }
    // The most recently written tenants keep their files.
    let open: Vec<String> = db
        .tenants()
        .iter()
        .filter(|t| t.db.wal_is_open())
        .map(|t| t.tenant.to_string())
        .collect();
    assert_eq!(open, ["t7", "t8", "t9"]);
    // A closed tenant takes a write again, and every tenant keeps what it was given.
    write(&db, "t0", now + 1).unwrap();
    assert!(open_wals(&db) <= 3);
    db.close();
    let db = MultiTsdb::open(options(dir.path(), 0, 3)).unwrap();
    assert_eq!(db.num_tenants(), 11, "ten tenants and the default one");
    assert!(open_wals(&db) <= 3, "{}", open_wals(&db));
    assert_eq!(samples(&db, "t0"), 1, "one chunk holding both samples");
    for i in 1..10 {
        assert_eq!(samples(&db, &format!("t{i}")), 1, "t{i}");
    }
}

#[test]
fn a_new_tenant_past_the_limit_is_unavailable_and_a_restart_opens_every_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::tsdb::now_ms();
    let db = MultiTsdb::open(options(dir.path(), 0, 64)).unwrap();
    for i in 0..4 {
        write(&db, &format!("t{i}"), now).unwrap();
    }
    db.close();
    // Five tenants on disk, a limit of three: all are opened, none added.
    let db = MultiTsdb::open(options(dir.path(), 3, 64)).unwrap();
    assert_eq!(db.num_tenants(), 5);
    write(&db, "t1", now + 1).expect("an existing tenant still writes");
    let e = write(&db, "new", now).unwrap_err();
    assert!(
        matches!(e, MultiTsdbError::TenantLimit { limit: 3, .. }),
        "{e}"
    );
    assert!(e.is_unavailable());
    assert!(e.to_string().contains("--tsdb.max-tenants"), "{e}");
    assert!(
        !dir.path().join("new").exists(),
        "a refused tenant leaves no directory"
    );
}

#[test]
fn running_out_of_descriptors_is_unavailable_and_other_io_errors_are_not() {
    let tenant = TenantId::new("t").unwrap();
    let io = |code| MultiTsdbError::Tenant {
        tenant: tenant.clone(),
        source: TsdbError::Wal(crate::tsdb::wal::WalError::Io {
            context: "reopen WAL segment".into(),
            source: std::io::Error::from_raw_os_error(code),
        }),
    };
    assert!(io(EMFILE).is_unavailable());
    assert!(io(ENFILE).is_unavailable());
    assert!(!io(28).is_unavailable(), "ENOSPC stays an internal error");
    assert!(MultiTsdbError::Closed.is_unavailable());
}
