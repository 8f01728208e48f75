use super::*;
use crate::merge::FailureKind;
use serde_json::json;
use std::sync::atomic::AtomicUsize;

fn settings() -> CacheSettings {
    CacheSettings {
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(60),
        time_to_idle: Duration::from_secs(600),
        stale_if_error: Duration::from_secs(300),
    }
}

fn key(source: &str, nhs: &str, role: &str) -> CacheKey {
    CacheKey {
        source: source.into(),
        nhs: nhs.into(),
        request: "Patient/x/$everything?".into(),
        role: role.into(),
        organisation: "RBD".into(),
        purpose: "TREAT".into(),
    }
}

fn answer(n: usize) -> RecordAnswer {
    RecordAnswer {
        items: crate::fhir::item::items_of(
            (0..n).map(|i| json!({"resourceType": "Condition", "id": format!("c{i}")})),
        ),
        ..RecordAnswer::default()
    }
}

fn failure() -> RegionFailure {
    RegionFailure {
        kind: FailureKind::Failed(500),
        reason: "answered HTTP 500".into(),
    }
}

/// A fetch that counts its calls and gives `n` items with `directive`.
fn ok(
    calls: &AtomicUsize,
    n: usize,
    directive: CacheDirective,
) -> impl std::future::Future<Output = Result<Fetched, RegionFailure>> + '_ {
    calls.fetch_add(1, Ordering::SeqCst);
    async move {
        Ok(Fetched {
            answer: answer(n),
            bytes: 100 * n.max(1),
            directive,
        })
    }
}

#[test]
fn cache_control_is_read() {
    assert_eq!(parse_cache_control([]), CacheDirective::default());
    let d = parse_cache_control(["private, max-age=30"]);
    assert_eq!(d.max_age, Some(Duration::from_secs(30)));
    assert!(!d.no_store);
    assert!(parse_cache_control(["no-store"]).no_store);
    assert!(parse_cache_control(["No-Cache"]).no_store);
    assert_eq!(
        parse_cache_control(["max-age=30", "max-age=5"]).max_age,
        Some(Duration::from_secs(5)),
        "the stricter of two"
    );
    assert_eq!(
        parse_cache_control(["max-age=soon"]).max_age,
        Some(Duration::ZERO)
    );
}

#[test]
fn the_federation_face_never_lets_a_break_glass_answer_be_kept() {
    assert_eq!(federation_cache_control(false, 60), "private, max-age=60");
    assert_eq!(federation_cache_control(true, 60), "no-store");
    assert_eq!(federation_cache_control(false, 0), "no-store");
    // What the face says, the asking gateway reads back.
    assert!(parse_cache_control([federation_cache_control(true, 60).as_str()]).no_store);
}

#[tokio::test]
async fn a_repeat_is_served_from_the_cache_and_keys_keep_users_apart() {
    let cache = ResponseCache::new(settings());
    let calls = AtomicUsize::new(0);
    let d = CacheDirective::default();
    let (a, s) = cache
        .get_or_fetch(key("wessex", "1", "R8000"), || ok(&calls, 3, d))
        .await
        .unwrap();
    assert_eq!((a.items.len(), s), (3, Source::Fetched));
    let (a, s) = cache
        .get_or_fetch(key("wessex", "1", "R8000"), || ok(&calls, 9, d))
        .await
        .unwrap();
    assert_eq!((a.items.len(), s), (3, Source::Hit));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Another role, organisation or purpose is another key: the peer may answer it otherwise.
    for k in [
        key("wessex", "1", "R8004"),
        CacheKey {
            organisation: "RDZ".into(),
            ..key("wessex", "1", "R8000")
        },
        CacheKey {
            purpose: "ETREAT".into(),
            ..key("wessex", "1", "R8000")
        },
    ] {
        let (a, s) = cache.get_or_fetch(k, || ok(&calls, 1, d)).await.unwrap();
        assert_eq!((a.items.len(), s), (1, Source::Fetched));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let cache = Arc::new(ResponseCache::new(settings()));
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch(key("wessex", "1", "R8000"), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Fetched {
                            answer: answer(2),
                            bytes: 200,
                            directive: CacheDirective::default(),
                        })
                    })
                    .await
                    .unwrap()
                    .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().items.len(), 2);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn errors_and_no_store_answers_are_never_cached() {
    let cache = ResponseCache::new(settings());
    let calls = AtomicUsize::new(0);
    let failing = || {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err(failure()) }
    };
    assert!(
        cache
            .get_or_fetch(key("wessex", "1", "R8000"), failing)
            .await
            .is_err()
    );
    let (_, s) = cache
        .get_or_fetch(key("wessex", "1", "R8000"), || {
            ok(&calls, 1, CacheDirective::default())
        })
        .await
        .unwrap();
    assert_eq!(s, Source::Fetched, "the error was not cached");

    let no_store = CacheDirective {
        no_store: true,
        max_age: None,
    };
    for _ in 0..3 {
        let (_, s) = cache
            .get_or_fetch(key("kent", "1", "R8000"), || ok(&calls, 1, no_store))
            .await
            .unwrap();
        assert_eq!(s, Source::Fetched);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn max_age_limits_freshness_and_a_stale_answer_covers_a_failure() {
    let cache = ResponseCache::new(settings());
    let calls = AtomicUsize::new(0);
    let at_once = CacheDirective {
        no_store: false,
        max_age: Some(Duration::ZERO),
    };
    cache
        .get_or_fetch(key("wessex", "1", "R8000"), || ok(&calls, 4, at_once))
        .await
        .unwrap();
    // max-age=0: never fresh, so the next request asks again...
    let (_, s) = cache
        .get_or_fetch(key("wessex", "1", "R8000"), || ok(&calls, 4, at_once))
        .await
        .unwrap();
    assert_eq!(s, Source::Fetched);
    // ...and when the region then fails, the kept answer is served, with its age.
    let (a, s) = cache
        .get_or_fetch(key("wessex", "1", "R8000"), || async { Err(failure()) })
        .await
        .unwrap();
    assert_eq!(a.items.len(), 4);
    assert!(matches!(s, Source::Stale(_)), "{s:?}");
    assert_eq!(cache.counters.stale_served.load(Ordering::SeqCst), 1);

    // Past the stale-if-error window, the failure is the answer.
    let strict = ResponseCache::new(CacheSettings {
        stale_if_error: Duration::ZERO,
        ..settings()
    });
    strict
        .get_or_fetch(key("wessex", "1", "R8000"), || ok(&calls, 4, at_once))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        strict
            .get_or_fetch(key("wessex", "1", "R8000"), || async { Err(failure()) })
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_consent_change_removes_the_patients_entries_only() {
    let cache = ResponseCache::new(settings());
    let calls = AtomicUsize::new(0);
    let d = CacheDirective::default();
    for k in [
        key("wessex", "1", "R8000"),
        key("kent", "1", "R8000"),
        key("wessex", "2", "R8000"),
    ] {
        cache.get_or_fetch(k, || ok(&calls, 1, d)).await.unwrap();
    }
    cache.invalidate_patient("1", Some("wessex"));
    let source = |k| {
        let cache = &cache;
        let calls = &calls;
        async move { cache.get_or_fetch(k, || ok(calls, 1, d)).await.unwrap().1 }
    };
    assert_eq!(source(key("wessex", "1", "R8000")).await, Source::Fetched);
    assert_eq!(source(key("kent", "1", "R8000")).await, Source::Hit);
    assert_eq!(source(key("wessex", "2", "R8000")).await, Source::Hit);
    cache.invalidate_patient("1", None);
    assert_eq!(source(key("kent", "1", "R8000")).await, Source::Fetched);
    cache.invalidate_region("wessex");
    assert_eq!(source(key("wessex", "2", "R8000")).await, Source::Fetched);
}

#[tokio::test]
async fn the_cache_is_bounded_by_bytes() {
    let cache = ResponseCache::new(CacheSettings {
        max_bytes: 2_000,
        ..settings()
    });
    let calls = AtomicUsize::new(0);
    for i in 0..50 {
        cache
            .get_or_fetch(key("wessex", &i.to_string(), "R8000"), || {
                ok(&calls, 3, CacheDirective::default())
            })
            .await
            .unwrap();
    }
    let held = cache.weighted_size().await;
    assert!(held <= 2_000, "{held} bytes held");
    assert!(held > 0);
}

#[tokio::test]
async fn a_served_answer_names_its_entry_and_only_a_fresh_entry_is_named() {
    let cache = ResponseCache::new(settings());
    let calls = AtomicUsize::new(0);
    let d = CacheDirective::default();
    let k = || key("wessex", "1", "R8000");
    assert_eq!(cache.fresh_generation(&k()).await, None);
    let first = cache.serve(k(), || ok(&calls, 2, d)).await.unwrap();
    let generation = first.generation.expect("a stored answer is named");
    // A hit is the same entry; the peek names it without counting a hit.
    let hits = cache.counters.hits.load(Ordering::SeqCst);
    assert_eq!(cache.fresh_generation(&k()).await, Some(generation));
    assert_eq!(cache.counters.hits.load(Ordering::SeqCst), hits);
    let again = cache.serve(k(), || ok(&calls, 9, d)).await.unwrap();
    assert_eq!(
        (again.source, again.generation),
        (Source::Hit, Some(generation))
    );

    // An answer fetched again is another entry, even with the same content.
    let at_once = CacheDirective {
        no_store: false,
        max_age: Some(Duration::ZERO),
    };
    let other = key("kent", "1", "R8000");
    let a = cache
        .serve(other.clone(), || ok(&calls, 2, at_once))
        .await
        .unwrap();
    // max-age=0: stored, but never fresh, so never found by a peek.
    assert_eq!(cache.fresh_generation(&other).await, None);
    let b = cache
        .serve(other.clone(), || ok(&calls, 2, at_once))
        .await
        .unwrap();
    assert!(a.generation.is_some() && b.generation.is_some());
    assert_ne!(a.generation, b.generation);
    // A stale answer covering a failure is not named: its age changes with every request.
    let stale = cache
        .serve(other, || async { Err(failure()) })
        .await
        .unwrap();
    assert!(matches!(stale.source, Source::Stale(_)));
    assert_eq!(stale.generation, None);
    // Nor is an answer the region asked not to store.
    let no_store = CacheDirective {
        no_store: true,
        max_age: None,
    };
    let kept_out = cache
        .serve(key("dorset", "1", "R8000"), || ok(&calls, 1, no_store))
        .await
        .unwrap();
    assert_eq!(kept_out.generation, None);
}

mod views {
    use super::*;
    use crate::cache::view::{KeptView, ViewKey};

    fn policies() -> Arc<policy::PolicySet> {
        Arc::new(crate::access::embedded_policy_set().unwrap())
    }

    fn user(role: &str) -> UserContext {
        UserContext {
            user_id: "u1".into(),
            role: role.into(),
            organisation: "RBD".into(),
            purpose_of_use: Some("TREAT".into()),
            break_glass: None,
            scope: None,
            patient: None,
        }
    }

    fn view_key(p: &Arc<policy::PolicySet>, role: &str, answers: Vec<u64>) -> ViewKey {
        ViewKey::new(
            &user(role),
            "9000000009",
            "https://gw/fhir/Condition?patient.identifier=x",
            false,
            p,
            &crate::consent::ConsentView::default(),
            answers,
            1_700_000_000,
        )
        .expect("no break-glass: a key")
    }

    fn kept(p: &Arc<policy::PolicySet>) -> KeptView {
        KeptView {
            policy: p.clone(),
            entries: crate::fhir::SerializedEntries::new(&[json!({"fullUrl": "x"})]),
            view: crate::merge::View {
                total: 1,
                regions_answered: 1,
                ..crate::merge::View::default()
            },
            released: 1,
            withheld: 0,
            policies: Vec::new(),
            regions: Vec::new(),
        }
    }

    #[test]
    fn a_view_is_found_only_with_every_input_the_same() {
        let cache = ResponseCache::new(settings());
        let p = policies();
        cache
            .views
            .insert(view_key(&p, "R8000", vec![0, 7]), kept(&p));
        assert!(
            cache
                .views
                .get(&view_key(&p, "R8000", vec![0, 7]), &p)
                .is_some()
        );
        // Another answer from a region, another role: another view.
        assert!(
            cache
                .views
                .get(&view_key(&p, "R8000", vec![0, 8]), &p)
                .is_none()
        );
        assert!(
            cache
                .views
                .get(&view_key(&p, "R8001", vec![0, 7]), &p)
                .is_none()
        );
        // Another user with the same role and organisation.
        let mut other = view_key(&p, "R8000", vec![0, 7]);
        other.user_id = "u2".into();
        assert!(cache.views.get(&other, &p).is_none());
        // The patient's directives changed (an objection): another view.
        let objecting: crate::consent::ConsentView = crate::consent::read(
            &[json!({"resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": crate::consent::CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
                "provision": {"type": "deny"}})],
            1_700_000_000,
        );
        assert_ne!(objecting, crate::consent::ConsentView::default());
        let mut changed = view_key(&p, "R8000", vec![0, 7]);
        changed.consent = objecting;
        assert!(cache.views.get(&changed, &p).is_none());
        // Another policy set (an activation), even one with the same policies.
        let q = policies();
        assert!(
            cache
                .views
                .get(&view_key(&q, "R8000", vec![0, 7]), &q)
                .is_none()
        );
        // Purging the patient removes the view.
        cache.invalidate_patient("9000000009", None);
        assert!(
            cache
                .views
                .get(&view_key(&p, "R8000", vec![0, 7]), &p)
                .is_none()
        );
    }

    #[test]
    fn a_break_glass_access_has_no_view_key() {
        let p = policies();
        let mut emergency = user("R8000");
        emergency.break_glass = Some("unconscious, history unavailable".into());
        let key = ViewKey::new(
            &emergency,
            "9000000009",
            "https://gw/fhir/Condition?patient.identifier=x",
            false,
            &p,
            &crate::consent::ConsentView::default(),
            vec![0, 7],
            1_700_000_000,
        );
        assert!(key.is_none());
    }

    #[test]
    fn the_time_is_an_input_only_when_a_policy_reads_it() {
        let p = policies();
        assert!(!p.reads_time());
        assert_eq!(view_key(&p, "R8000", vec![1]).second, None);
        let timed = Arc::new(
            policy::PolicySet::from_sources(
                crate::access::EMBEDDED_SCHEMA,
                vec![(
                    "t.cedar".to_owned(),
                    "@id(\"t\")\npermit (principal, action, resource) when { context.time > 0 };\n"
                        .to_owned(),
                )],
            )
            .unwrap(),
        );
        assert_eq!(
            view_key(&timed, "R8000", vec![1]).second,
            Some(1_700_000_000)
        );
    }
}
