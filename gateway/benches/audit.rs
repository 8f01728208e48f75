//! Audit trail appends: the latency one request's record adds (a lone writer: one group commit,
//! one fsync, per record) and the throughput of many concurrent requests sharing group
//! commits, on SQLite (a file in the target directory, WAL, synchronous=FULL) and, when a
//! server answers at GATEWAY_TEST_POSTGRES (default 127.0.0.1:5432), PostgreSQL.
//! `cargo bench -p gateway --bench audit`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::audit::{AuditEvent, EventKind, RegionOutcome};
use gateway::store::audit::{AuditStore, SqliteAudit};

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(
        EventKind::ClinicianQuery,
        "2026-11-25T10:00:00Z".into(),
        &format!("bench-{i}"),
    );
    e.user_id = "bench-user".into();
    e.role = "R8000".into();
    e.organisation = "RBD".into();
    e.purpose_of_use = "TREAT".into();
    e.patient = Some("9000000009".into());
    e.regions = ["dorset", "hampshire", "wiltshire"]
        .iter()
        .map(|r| RegionOutcome {
            region: (*r).into(),
            outcome: "answered".into(),
            items: 40,
        })
        .collect();
    e.released = 110;
    e.withheld = 3;
    e.policies = vec!["direct-care-clinicians".into(), "sensitive-hiv".into()];
    e.status = 200;
    e.detail =
        serde_json::json!({"method": "GET", "query": "/fhir/Patient/9000000009/$everything"});
    e
}

fn bench_store(
    c: &mut Criterion,
    name: &str,
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn AuditStore>,
) {
    let mut group = c.benchmark_group(format!("audit_append_{name}"));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    group.bench_function("one_writer_latency", |b| {
        b.iter_custom(|iters| {
            let store = store.clone();
            rt.block_on(async move {
                let start = Instant::now();
                for i in 0..iters {
                    store.append(event(i)).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    for writers in [16u64, 256] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(format!("{writers}_concurrent_writers"), |b| {
            b.iter_custom(|iters| {
                let store = store.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    for round in 0..iters {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    store.append(event(round * 1000 + w)).await.unwrap()
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// An event's RFC 8785 form, as the gateway writes it and as the library it is tested against
/// writes it (the reference, in the same run).
fn canonical_form(c: &mut Criterion) {
    let e = event(7);
    let mut group = c.benchmark_group("audit canonical form");
    group.bench_function("gateway (canonical_event)", |b| {
        b.iter(|| gateway::audit::canonical_event(std::hint::black_box(&e)))
    });
    group.bench_function("reference: serde_json_canonicalizer", |b| {
        b.iter(|| serde_json_canonicalizer::to_string(std::hint::black_box(&e)).unwrap())
    });
    group.finish();
}

fn audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-audit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite: Arc<dyn AuditStore> = {
        let _guard = rt.enter();
        Arc::new(SqliteAudit::open(&dir.join("audit.sqlite")).unwrap())
    };
    bench_store(c, "sqlite", &rt, sqlite);

    let conninfo = std::env::var("GATEWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("gw_bench_{}", uuid::Uuid::new_v4().simple());
    let pg = rt.block_on(async {
        let connector = gateway::store::postgres::Connector::new(&conninfo, &schema, None).ok()?;
        gateway::store::postgres::PostgresAudit::connect(connector)
            .await
            .ok()
    });
    match pg {
        Some(pg) => {
            bench_store(c, "postgres", &rt, Arc::new(pg));
            rt.block_on(async {
                if let Ok(s) =
                    gateway::store::postgres::PostgresStore::connect(&conninfo, &schema).await
                {
                    let _ = s.drop_schema().await;
                }
            });
        }
        None => {
            eprintln!("no PostgreSQL at GATEWAY_TEST_POSTGRES: PostgreSQL appends not measured")
        }
    }
}

criterion_group!(benches, canonical_form, audit);
criterion_main!(benches);
