//! The governance API against real gateways: drafts, checks, simulation, activation and
//! rollback change what a clinician's query returns; and the console drives it all in a real
//! browser (Debian's chromium through playwright-core).

use serde_json::{Value, json};

use crate::common::{Builder, TestFederation, entries, objection};

/// A rule that withholds allergies from the staff of one organisation (no test case names
/// that organisation, so the default cases still pass).
pub const PILOT_RULE: &str = "\n// Staff of the pilot organisation RXX01 do not see allergies.\n@id(\"pilot-no-allergies\")\nforbid (principal, action == Gateway::Action::\"read:AllergyIntolerance\", resource)\nwhen { principal.organisation == \"RXX01\" };\n";

/// A governance API request at `region` (0 is the first), its status and JSON body.
async fn send(
    fed: &TestFederation,
    region: usize,
    method: http::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (http::StatusCode, Value) {
    let url = format!("{}{}", fed.base(region).trim_end_matches("/fhir"), path);
    let mut req = fed.client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(fed: &TestFederation, path: &str, token: &str) -> (http::StatusCode, Value) {
    send(fed, 0, http::Method::GET, path, token, None).await
}

async fn get_at(
    fed: &TestFederation,
    region: usize,
    path: &str,
    token: &str,
) -> (http::StatusCode, Value) {
    send(fed, region, http::Method::GET, path, token, None).await
}

async fn post(
    fed: &TestFederation,
    path: &str,
    token: &str,
    body: Value,
) -> (http::StatusCode, Value) {
    send(fed, 0, http::Method::POST, path, token, Some(body)).await
}

async fn post_at(
    fed: &TestFederation,
    region: usize,
    path: &str,
    token: &str,
    body: Value,
) -> (http::StatusCode, Value) {
    send(fed, region, http::Method::POST, path, token, Some(body)).await
}

async fn allergies_seen_by(fed: &TestFederation, token: &str) -> usize {
    allergies_seen_at(fed, 0, token).await
}

async fn allergies_seen_at(fed: &TestFederation, region: usize, token: &str) -> usize {
    let path = format!(
        "/AllergyIntolerance?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.everywhere()
    );
    let reply = fed.get(region, &path, Some(token)).await;
    assert_eq!(reply.status, 200, "{:#?}", reply.body);
    entries(&reply.body, "match").len()
}

/// A clinician's break-glass query at the first region, for the review queue.
async fn break_the_glass(fed: &TestFederation, reason: &str) {
    let path = format!(
        "{}/Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
        fed.base(0),
        fed.everywhere()
    );
    let resp = fed
        .client()
        .get(&path)
        .bearer_auth(fed.token("R8000"))
        .header("X-Break-Glass-Reason", reason)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The active version's files with the pilot rule added to `10-direct-care.cedar`.
async fn draft_files(fed: &TestFederation, governance: &str) -> (i64, Vec<Value>) {
    draft_files_at(fed, 0, governance).await
}

async fn draft_files_at(
    fed: &TestFederation,
    region: usize,
    governance: &str,
) -> (i64, Vec<Value>) {
    let (s, list) = get_at(fed, region, "/admin/api/policies", governance).await;
    assert_eq!(s, 200, "{list:#?}");
    let active = list["active"].as_i64().unwrap();
    let (_, v) = get_at(
        fed,
        region,
        &format!("/admin/api/policies/{active}"),
        governance,
    )
    .await;
    let mut files = v["files"].as_array().unwrap().clone();
    let f = files
        .iter_mut()
        .find(|f| f["name"] == "10-direct-care.cedar")
        .unwrap();
    f["text"] = json!(format!("{}{PILOT_RULE}", f["text"].as_str().unwrap()));
    (active, files)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draft_is_checked_simulated_activated_and_rolled_back_and_queries_follow() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let governance = fed.token_with(|c| {
        c.role = "R0001".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    let pilot = fed.token_with(|c| c.org = "RXX01".into());
    let before = allergies_seen_by(&fed, &pilot).await;
    assert!(before > 0, "the demo patient has allergies");

    // Clinicians may not touch policies.
    let (s, _) = get(&fed, "/admin/api/policies", &fed.token("R8000")).await;
    assert_eq!(s, 403);

    let (v1, mut files) = draft_files(&fed, &governance).await;
    // A broken draft: the check names the file, line and column; it saves but cannot activate.
    let good = files[0]["text"].as_str().unwrap().to_owned();
    files[0]["text"] = json!(good.replace("when {", "when {{"));
    let (s, r) = post(
        &fed,
        "/admin/api/policies/check",
        &governance,
        json!({"files": files}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["activatable"], false);
    let p = &r["problems"][0];
    assert_eq!(p["file"], "10-direct-care.cedar", "{r:#?}");
    assert!(p["line"].as_u64().unwrap() > 1 && p["column"].as_u64().unwrap() >= 1);
    let (s, broken) = post(
        &fed,
        "/admin/api/policies",
        &governance,
        json!({"files": files, "based_on": v1, "comment": "a broken draft, saved to fix later"}),
    )
    .await;
    assert_eq!(s, 201);
    let broken_id = broken["id"].as_i64().unwrap();
    let (s, refused) = post(
        &fed,
        &format!("/admin/api/policies/{broken_id}/activate"),
        &governance,
        json!({"reason": "trying to activate a broken draft"}),
    )
    .await;
    assert_eq!(s, 422, "{refused:#?}");
    assert_eq!(allergies_seen_by(&fed, &pilot).await, before);

    // The fixed draft: valid, its cases pass, the diff shows the rule.
    files[0]["text"] = json!(good);
    let (s, draft) = post(
        &fed,
        "/admin/api/policies",
        &governance,
        json!({"files": files, "based_on": v1, "comment": "withhold allergies from the pilot site"}),
    )
    .await;
    assert_eq!(s, 201, "{draft:#?}");
    assert_eq!(draft["activatable"], true, "{draft:#?}");
    assert!(draft["cases"]["passed"].as_u64().unwrap() > 100);
    let v2 = draft["id"].as_i64().unwrap();
    let diff = &draft["diff"]["files"];
    assert_eq!(diff.as_array().unwrap().len(), 1);
    assert!(
        diff[0]["unified"]
            .as_str()
            .unwrap()
            .contains("+@id(\"pilot-no-allergies\")")
    );

    // Simulate: one item, and the patient's record in this region.
    let (s, sim) = post(
        &fed,
        "/admin/api/policies/simulate",
        &governance,
        json!({"version": v2, "user": {"role": "R8000", "organisation": "RXX01"},
                    "resource_type": "AllergyIntolerance", "item": {"region": "dorset"}}),
    )
    .await;
    assert_eq!(s, 200, "{sim:#?}");
    assert_eq!(sim["item"]["active"]["allowed"], true);
    assert_eq!(sim["item"]["draft"]["allowed"], false);
    assert_eq!(
        sim["item"]["draft"]["because"][0]["id"],
        "pilot-no-allergies"
    );
    assert!(
        sim["item"]["draft"]["because"][0]["comment"]
            .as_str()
            .unwrap()
            .contains("pilot organisation")
    );
    let (_, sim) = post(
        &fed,
        "/admin/api/policies/simulate",
        &governance,
        json!({"version": v2, "user": {"role": "R8000", "organisation": "RXX01"}, "patient": fed.everywhere()}),
    )
    .await;
    let record = &sim["record"];
    let withheld = record["changes"][0]["count"].as_u64().unwrap();
    assert_eq!(record["changes"][0]["resource_type"], "AllergyIntolerance");
    assert_eq!(
        record["summary"],
        format!("{withheld} items would now be withheld from R8000 users")
    );

    // Activate: needs a reason; then the pilot site's clinicians see no allergies.
    let (s, _) = post(
        &fed,
        &format!("/admin/api/policies/{v2}/activate"),
        &governance,
        json!({"reason": "short"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, a) = post(
        &fed,
        &format!("/admin/api/policies/{v2}/activate"),
        &governance,
        json!({"reason": "pilot agreed by the Caldicott guardian"}),
    )
    .await;
    assert_eq!(s, 200, "{a:#?}");
    assert_eq!(a["previous"], v1);
    assert_eq!(allergies_seen_by(&fed, &pilot).await, 0);
    assert_eq!(
        allergies_seen_by(&fed, &fed.token("R8000")).await,
        before,
        "other organisations are unaffected"
    );

    // Roll back to the first version: allergies are back.
    let (s, _) = post(
        &fed,
        &format!("/admin/api/policies/{v1}/activate"),
        &governance,
        json!({"reason": "pilot ended, back to the standard set"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(allergies_seen_by(&fed, &pilot).await, before);

    let (_, list) = get(&fed, "/admin/api/policies", &governance).await;
    assert_eq!(list["active"], v1);
    let reasons: Vec<&str> = list["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons[..2],
        [
            "pilot ended, back to the standard set",
            "pilot agreed by the Caldicott guardian"
        ]
    );

    // Each activation is in the audit trail with who, why and the files' digest; the refused
    // one is recorded as refused.
    let events = fed.audit_events(0, "kind=policy-activation", 4).await;
    let ok: Vec<&Value> = events.iter().filter(|e| e["outcome"] == "0").collect();
    assert!(ok.len() >= 2, "{events:#?}");
    assert!(ok.iter().any(|e| {
        crate::common::audit_detail(e, "reason").as_deref()
            == Some("pilot agreed by the Caldicott guardian")
    }));
    assert!(events.iter().any(|e| e["outcome"] == "4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_accesses_wait_for_review_and_are_reviewed_once() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let governance = fed.token_with(|c| {
        c.role = "R0001".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    break_the_glass(&fed, "unconscious patient in the emergency department").await;

    let (s, q) = get(&fed, "/admin/api/break-glass?reviewed=false", &governance).await;
    assert_eq!(s, 200, "{q:#?}");
    let access = &q["accesses"][0];
    assert_eq!(
        access["reason"],
        "unconscious patient in the emergency department"
    );
    assert_eq!(access["patient"], fed.everywhere());
    let seq = access["seq"].as_u64().unwrap();

    // Clinicians may not review; a note is required; a review is recorded once.
    let (s, _) = post(
        &fed,
        &format!("/admin/api/break-glass/{seq}/review"),
        &fed.token("R8000"),
        json!({"note": "looks fine to me, honestly"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, r) = post(
        &fed,
        &format!("/admin/api/break-glass/{seq}/review"),
        &governance,
        json!({"note": "confirmed with the ED consultant"}),
    )
    .await;
    assert_eq!(s, 200, "{r:#?}");
    assert_eq!(r["review"]["reviewer"], "test-user");
    let (s, _) = post(
        &fed,
        &format!("/admin/api/break-glass/{seq}/review"),
        &governance,
        json!({"note": "a second review of the same access"}),
    )
    .await;
    assert_eq!(s, 409);
    // A record that is not a break-glass access cannot be reviewed (the next record is the
    // governance user's reading of the queue).
    let (s, _) = post(
        &fed,
        &format!("/admin/api/break-glass/{}/review", seq + 1),
        &governance,
        json!({"note": "not a break-glass access at all"}),
    )
    .await;
    assert_eq!(s, 404);

    let (_, q) = get(&fed, "/admin/api/break-glass?reviewed=false", &governance).await;
    assert!(
        q["accesses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["seq"] != seq)
    );
    let (_, q) = get(&fed, "/admin/api/break-glass?reviewed=any", &governance).await;
    let reviewed = q["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["seq"] == seq)
        .unwrap();
    assert_eq!(
        reviewed["review"]["note"],
        "confirmed with the ED consultant"
    );
}

/// The console in a real browser: sign in, break a policy and see the error, fix it, save,
/// diff, simulate, activate and see a clinician's answer change, roll back and see it change
/// back; the audit search, the review queue and the consent lookup. Screenshots of each page
/// go to `target/console-screenshots/`.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_browser() {
    let fed = Builder::new(&["dorset", "hampshire"]).start().await;
    let governance = fed.token_with(|c| {
        c.role = "R0001".into();
        c.purpose_of_use = "HOPERAT".into();
        c.sub = "privacy-officer-1".into();
    });
    // A break-glass access for the review queue.
    break_the_glass(&fed, "collapsed in clinic, no history available").await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/console/console.mjs");
    let shots = root.join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut command = std::process::Command::new("node");
    command
        .arg(&script)
        .env("CONSOLE_URL", fed.base(0).replace("/fhir", "/admin/"))
        .env("GOVERNANCE_TOKEN", &governance)
        .env("PILOT_TOKEN", fed.token_with(|c| c.org = "RXX01".into()))
        .env("NHS_NUMBER", fed.everywhere())
        .env("SCREENSHOTS", &shots)
        .env("PILOT_RULE", PILOT_RULE);
    // The gateways run on this runtime; the browser runs beside it.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("node is required for the browser test (scripts/test installs it): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed (scripts/test installs chromium and playwright-core):\n{stdout}\n{stderr}"
    );
    for page in [
        "01-sign-in",
        "02-validation-error",
        "03-valid-draft",
        "04-diff",
        "05-simulator",
        "06-activated",
        "07-rolled-back",
        "08-audit-search",
        "09-break-glass-review",
        "10-consent-lookup",
    ] {
        let p = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "screenshot {} missing\n{stdout}",
            p.display()
        );
    }
    // The browser's activation and rollback were recorded under the governance user.
    let events = fed.audit_events(0, "kind=policy-activation", 3).await;
    assert!(
        events
            .iter()
            .filter(|e| e["outcome"] == "0")
            .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == "privacy-officer-1")
            .count()
            >= 2,
        "{events:#?}"
    );
}

/// Two replicas of hampshire share one PostgreSQL store: a version activated through one
/// applies on the other within a few seconds; a consent directive recorded through one is
/// honoured by the other; both write one audit trail that verifies.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_postgres_apply_one_policy_one_consent_store_and_one_trail() {
    let mut fed = Builder::new(&["dorset", "hampshire"])
        .postgres()
        .start()
        .await;
    // Replica A is region 1 as built; replica B is a second process of it.
    let (a, b) = (1, fed.start_replica("hampshire").await);
    let governance = fed.token_with(|c| {
        c.role = "R0001".into();
        c.purpose_of_use = "HOPERAT".into();
    });
    let pilot = fed.token_with(|c| c.org = "RXX01".into());
    let before = allergies_seen_at(&fed, b, &pilot).await;
    assert!(before > 0);
    assert_eq!(allergies_seen_at(&fed, a, &pilot).await, before);

    // Activate a version through A.
    let (v1, files) = draft_files_at(&fed, a, &governance).await;
    let (s, draft) = post_at(
        &fed,
        a,
        "/admin/api/policies",
        &governance,
        json!({"files": files, "based_on": v1, "comment": "withhold allergies from the pilot site"}),
    )
    .await;
    assert_eq!(s, 201);
    let v2 = draft["id"].as_i64().unwrap();
    let (s, _) = post_at(
        &fed,
        a,
        &format!("/admin/api/policies/{v2}/activate"),
        &governance,
        json!({"reason": "pilot agreed by the Caldicott guardian"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(allergies_seen_at(&fed, a, &pilot).await, 0);
    // B applies it at its next poll (every 2 s by default).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while allergies_seen_at(&fed, b, &pilot).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica B did not apply the activation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, list) = get_at(&fed, b, "/admin/api/policies", &governance).await;
    assert_eq!(list["active"], v2, "B reports the version it applies");

    // A patient's objection recorded through B: dorset's query, answered by A, gets nothing
    // of hampshire's record.
    let nhs = fed.everywhere();
    let objection = objection(&nhs);
    let created = fed
        .client()
        .post(format!("{}/Consent", fed.base(b)))
        .bearer_auth(fed.token("R0001"))
        .header("content-type", "application/fhir+json")
        .body(objection.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let everything = fed
        .get(
            0,
            &format!("/Patient/{nhs}/$everything"),
            Some(&fed.token("R8000")),
        )
        .await;
    let hampshire_items = entries(&everything.body, "match")
        .iter()
        .filter(|e| e["resource"]["resourceType"] != "Patient")
        .filter(|e| crate::common::region_tags(&e["resource"]).contains(&"hampshire".to_owned()))
        .count();
    assert_eq!(
        hampshire_items, 0,
        "A honours the objection recorded through B"
    );

    // Both replicas wrote to one trail, and it verifies.
    let config = gateway::config::Config::load(&fed.config_path("hampshire")).unwrap();
    let report = gateway::app::verify_trail(&config, &[]).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let events = fed.audit_events(b, "", 1).await;
    let kinds: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| {
            e["entity"].as_array()?.last()?["name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        kinds.contains("federation-query")
            && kinds.contains("policy-activation")
            && kinds.contains("consent-change"),
        "records written by A (federation query, activation) and by B (consent) in one trail: {kinds:?}"
    );
    fed.drop_pg_schemas().await;
}
