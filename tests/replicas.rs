//! One region, several replicas on one PostgreSQL store behind a real TCP load balancer
//! (nginx's stream module, round robin, TLS passed through): pages any replica serves, under
//! the rules in force when each is served; consent changes and policy activations that reach
//! every replica before its next answer.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::*;

/// `$everything` of the realistic patient, `_count` a page, from `url_base`.
fn everything(base: &str, nhs: &str, count: usize) -> String {
    format!("{base}/Patient/{nhs}/$everything?_count={count}")
}

/// A client that opens a new connection for every request, so that the round-robin balancer
/// sends consecutive requests to alternate replicas.
fn fresh_connections(fed: &TestFederation) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(fed.ca.cert_pem.as_bytes()).unwrap()])
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

fn match_urls(bundle: &Value) -> Vec<String> {
    entries(bundle, "match")
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
        .collect()
}

async fn record_objection(fed: &TestFederation, base: &str, nhs: &str) {
    let r = fed
        .client()
        .post(format!("{base}/Consent"))
        .bearer_auth(fed.token("R0001"))
        .header("content-type", "application/fhir+json")
        .body(objection(nhs).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// `builder`'s federation on PostgreSQL, its region `code` (at `first`, its index) running two
/// replicas behind a round-robin balancer: the federation, the second replica's index, the
/// balancer.
async fn two_replicas_of(
    code: &str,
    first: usize,
    builder: Builder,
) -> (TestFederation, usize, Balancer) {
    let mut fed = builder.postgres().balanced(code).start().await;
    let second = fed.start_replica(code).await;
    let lb = fed.balance(code, &[first, second]).await;
    (fed, second, lb)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paged_everything_is_served_to_the_end_through_a_round_robin_balancer() {
    let builder = Builder::new(&["dorset", "hampshire"]).realistic(1, 60);
    let (fed, second, lb) = two_replicas_of("dorset", 0, builder).await;
    let base = format!("https://localhost:{}/fhir", lb.clinician);
    let nhs = fed.realistic[0].nhs.to_string();
    let token = fed.token("R8000");
    let client = fresh_connections(&fed);

    let whole = get_json(&client, &everything(&base, &nhs, 100_000), Some(&token)).await;
    assert_eq!(whole.status, 200);
    let all = match_urls(&whole.body);
    assert!(all.len() > 60, "a long record: {}", all.len());

    let mut url = everything(&base, &nhs, 7);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        // Each page goes to whichever replica the balancer picks next.
        let page = get_json(&client, &url, Some(&token)).await;
        assert_eq!(page.status, 200, "page {pages}: {:#}", page.body);
        assert_eq!(page.body["total"].as_u64().unwrap() as usize, all.len());
        seen.extend(match_urls(&page.body));
        pages += 1;
        match next_link(&page.body) {
            Some(next) => {
                assert!(next.starts_with(&base), "links name the balancer: {next}");
                url = next;
            }
            None => break,
        }
    }
    assert!(pages >= 9, "{pages} pages");
    assert_eq!(
        seen, all,
        "every match once, in order, across both replicas"
    );
    // Both replicas decided views: the one that made the cursor, and the other for the pages
    // the balancer sent it.
    for replica in [0, second] {
        assert!(
            metric_sum(&fed, replica, "gateway_policy_items_total").await > 0.0,
            "replica {replica} served none of it"
        );
    }
    drop(lb);
    fed.drop_pg_schemas().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_change_withholds_from_the_open_cursor_s_later_pages_on_every_replica() {
    let builder = Builder::new(&["dorset", "hampshire"]).realistic(1, 60);
    let (fed, _, lb) = two_replicas_of("dorset", 0, builder).await;
    let base = format!("https://localhost:{}/fhir", lb.clinician);
    let nhs = fed.realistic[0].nhs.to_string();
    let token = fed.token("R8000");
    let client = fresh_connections(&fed);

    let before = match_urls(
        &get_json(&client, &everything(&base, &nhs, 100_000), Some(&token))
            .await
            .body,
    );
    let first = get_json(&client, &everything(&base, &nhs, 5), Some(&token)).await;
    assert_eq!(first.status, 200);
    let mut next = next_link(&first.body).expect("more than one page");

    // The patient objects to hampshire sharing its record: hampshire tells dorset (through
    // the balancer, so one replica hears it), and hampshire's items are withheld.
    record_objection(&fed, &fed.base(1), &nhs).await;
    let fresh = get_json(&client, &everything(&base, &nhs, 100_000), Some(&token)).await;
    let allowed: BTreeSet<String> = match_urls(&fresh.body).into_iter().collect();
    let withheld: Vec<&String> = before.iter().filter(|u| !allowed.contains(*u)).collect();
    assert!(
        withheld.len() > 10 && before[5..].iter().any(|u| !allowed.contains(u)),
        "the objection withholds items on the later pages: {} of {}",
        withheld.len(),
        before.len()
    );

    let mut later = Vec::new();
    loop {
        let page = get_json(&client, &next, Some(&token)).await;
        assert_eq!(page.status, 200, "{:#}", page.body);
        assert_eq!(
            page.body["total"].as_u64().unwrap() as usize,
            allowed.len(),
            "total says what a fresh query would show"
        );
        for url in match_urls(&page.body) {
            assert!(
                allowed.contains(&url),
                "a withheld item on a later page: {url}"
            );
            later.push(url);
        }
        let suppressed = outcome_issues(&page.body)
            .iter()
            .any(|(code, _, _)| code == "suppressed");
        assert!(suppressed, "the page says items were withheld");
        match next_link(&page.body) {
            Some(n) => next = n,
            None => break,
        }
    }
    // Nothing still allowed was skipped: the later pages hold every allowed member past page 1.
    let expected: Vec<&String> = before[5..]
        .iter()
        .filter(|u| allowed.contains(*u))
        .collect();
    assert_eq!(later.iter().collect::<Vec<_>>(), expected);
    drop(lb);
    fed.drop_pg_schemas().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_change_at_a_neighbour_reaches_both_replicas_before_their_next_answer() {
    // Hampshire runs two replicas behind a balancer; dorset's notice of a consent change
    // reaches one of them; both must stop serving dorset's withheld record at once.
    let (fed, second, lb) =
        two_replicas_of("hampshire", 1, Builder::new(&["dorset", "hampshire"])).await;
    let nhs = fed.everywhere();
    let token = fed.token("R8000");
    let path = format!("/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}");
    let dorset_items = |body: &Value| {
        entries(body, "match")
            .iter()
            .filter(|e| region_tags(&e["resource"]) == ["dorset"])
            .count()
    };
    // Warm caches on both replicas (asked directly, not through the balancer).
    for replica in [1, second] {
        for _ in 0..2 {
            let r = fed.get(replica, &path, Some(&token)).await;
            assert_eq!(r.status, 200);
            assert!(dorset_items(&r.body) > 0, "dorset's items are shown before");
        }
    }
    let fed_ref = &fed;
    let hits = |replica: usize| async move {
        metric_sum(fed_ref, replica, "gateway_cache_hits_total").await
            + metric_sum(fed_ref, replica, "gateway_cache_views_served_total").await
    };
    assert!(
        hits(1).await > 0.0 && hits(second).await > 0.0,
        "the caches are warm"
    );

    record_objection(&fed, &fed.base(0), &nhs).await;
    for replica in [1, second] {
        let r = fed.get(replica, &path, Some(&token)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            dorset_items(&r.body),
            0,
            "replica {replica} still served dorset's withheld record from its cache"
        );
    }
    drop(lb);
    fed.drop_pg_schemas().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_activated_through_one_replica_applies_on_the_other_within_a_second() {
    // Polling is slowed to a minute: only the announcement can make it in time.
    let mut fed = Builder::new(&["dorset", "hampshire"])
        .postgres()
        .first_region_toml("[policy]\npoll_interval_ms = 60000\n")
        .start()
        .await;
    let b = fed.start_replica("dorset").await;
    let governance = fed.token_with(|c| {
        c.role = "R0001".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    let admin = |region: usize, path: String, body: Option<Value>| {
        let url = format!(
            "https://localhost:{}/admin/api/{path}",
            fed.regions[region].clinician.port()
        );
        let (client, token) = (fed.client(), governance.clone());
        async move {
            let request = match body {
                None => client.get(url),
                Some(b) => client.post(url).json(&b),
            };
            let r = request.bearer_auth(token).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{status}: {body}");
            body
        }
    };
    let list = |region: usize| admin(region, "policies".into(), None);
    let active = list(0).await["active"].as_i64().unwrap();
    let v = admin(0, format!("policies/{active}"), None).await;
    let body = json!({"files": v["files"], "based_on": active, "comment": "the same rules, again"});
    let draft = admin(0, "policies".into(), Some(body)).await;
    let id = draft["id"].as_i64().unwrap();
    let reason = json!({"reason": "the same rules, activated again"});
    admin(0, format!("policies/{id}/activate"), Some(reason)).await;
    let activated = std::time::Instant::now();
    // The other replica reports it without being asked a query (nothing there catches up on
    // a request): the NOTIFY it listened for.
    loop {
        if list(b).await["active"] == id {
            break;
        }
        assert!(
            activated.elapsed() < std::time::Duration::from_secs(1),
            "the other replica did not apply the activation within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fed.drop_pg_schemas().await;
}
