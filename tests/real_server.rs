//! One region's record on a real FHIR R4 server that nobody on this project wrote: the Helios
//! FHIR Server (crates.io `helios-hfs`), which `scripts/test` installs with the FHIR R4 search
//! parameter definitions it needs. It is loaded with realistic patients (years of care,
//! hundreds of items in each region) and serves pages of at most 20 entries, as the record
//! server in the issue that found regions vanishing did.
//!
//! For every realistic patient, `$everything` and every type search through the gateway must
//! show every item each region holds: the Provenance of each region names as many items of each
//! type as the region's own count (the server's for the region on it), every one of them an
//! entry of the Bundle, and no answer is cut. Every reference in every Bundle is followed.
//!
//! Nothing is skipped: without `GATEWAY_TEST_HFS` (the server binary) and
//! `GATEWAY_TEST_HFS_DATA` (its search parameter directory) the test fails.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// The Helios FHIR Server, started for one test on a port of its own with a database of its
/// own, stopped when dropped.
pub(crate) struct Hfs {
    child: Child,
    pub(crate) base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Hfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hfs {
    async fn start() -> Hfs {
        Self::start_as(None).await
    }

    /// A server whose links name `public` (a proxy in front of it) instead of its own address.
    pub(crate) async fn start_as(public: Option<&str>) -> Hfs {
        let bin = std::env::var("GATEWAY_TEST_HFS").expect(
            "GATEWAY_TEST_HFS must name the Helios FHIR Server binary (scripts/test installs it)",
        );
        let data = std::env::var("GATEWAY_TEST_HFS_DATA").expect(
            "GATEWAY_TEST_HFS_DATA must name the directory holding search-parameters-r4.json (scripts/test makes it)",
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let links = public.map_or_else(|| base.clone(), str::to_owned);
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--database-url")
            .arg(dir.path().join("fhir.db"))
            .arg("--data-dir")
            .arg(&data)
            .env("HFS_BASE_URL", &links)
            .env("HFS_DEFAULT_PAGE_SIZE", "20")
            .env("HFS_MAX_PAGE_SIZE", "20")
            .env("HFS_UI_ENABLED", "false")
            .env("HFS_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the FHIR server {bin}: {e}"));
        let hfs = Hfs {
            child,
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = hfs
                .client
                .get(format!("{}/metadata", hfs.base))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the FHIR server did not answer /metadata within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        hfs
    }

    /// Loads resources under their own ids, in transactions of 250.
    pub(crate) async fn load(&self, resources: &[Value]) {
        for chunk in resources.chunks(250) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|r| {
                    let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
                    json!({"fullUrl": format!("{}/{url}", self.base), "resource": r, "request": {"method": "PUT", "url": url}})
                })
                .collect();
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let r = self
                .client
                .post(&self.base)
                .header("content-type", "application/fhir+json")
                .body(bundle.to_string())
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(
                status.is_success(),
                "loading the FHIR server: {status} {text:.2000}"
            );
        }
    }

    /// The server's own count for a search (`_summary=count`).
    async fn count(&self, path: &str) -> usize {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self
            .client
            .get(format!("{}/{path}{sep}_summary=count", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let body: Value = r.json().await.unwrap();
        body["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("{path}: no total in {body}")) as usize
    }
}

/// Items of each type a region contributed to a Bundle, read from its Provenance; and that
/// every one of them is an entry of the Bundle.
fn contributed(bundle: &Value, region: &str) -> BTreeMap<String, usize> {
    let urls: std::collections::HashSet<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    let provenance = entries(bundle, "include")
        .into_iter()
        .map(|e| &e["resource"])
        .find(|r| {
            r["resourceType"] == "Provenance"
                && r["agent"][0]["who"]["identifier"]["value"] == region
        })
        .unwrap_or_else(|| panic!("no Provenance for {region}"));
    let mut counts = BTreeMap::new();
    for t in provenance["target"].as_array().unwrap() {
        let url = t["reference"].as_str().unwrap();
        let rtype = url.rsplit('/').nth(1).unwrap();
        if rtype == "Patient" {
            // A region that contributed no item names the patient it answered about.
            continue;
        }
        assert!(
            urls.contains(url),
            "{region}'s target {url} is not in the Bundle"
        );
        *counts.entry(rtype.to_owned()).or_default() += 1;
    }
    counts
}

/// What a directory region holds of a patient, by type, from the generated records.
fn held(records: &[Value], local_patient: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        let rtype = r["resourceType"].as_str().unwrap();
        let Some(t) = gateway::fhir::types::ResourceType::parse(rtype) else {
            continue;
        };
        if r[t.patient_element()]["reference"] == format!("Patient/{local_patient}") {
            *counts.entry(rtype.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn no_cut(bundle: &Value) {
    let cuts: Vec<(String, String, String)> = outcome_issues(bundle)
        .into_iter()
        .filter(|(code, _, _)| code == "incomplete")
        .collect();
    assert!(cuts.is_empty(), "an answer was cut: {cuts:?}");
}

#[tokio::test]
async fn every_item_of_realistic_patients_on_a_real_fhir_server_reaches_the_clinician() {
    let hfs = Hfs::start().await;
    let codes = ["dorset", "hampshire", "wiltshire"];
    let fed = Builder::new(&codes)
        .patients(6)
        .realistic(3, 600)
        .local_record(&hfs.base, 30_000)
        .record_keys("page_size = 20")
        .timeouts(60_000, 50_000)
        // Following every reference of every answer is thousands of reads by one user.
        .first_region_toml("[limits]\nper_user_per_minute = 1000000\n")
        .start()
        .await;
    hfs.load(&fed.data.records["dorset"]).await;
    let token = fed.token("R8000");
    let types: Vec<&str> = gateway::fhir::types::ResourceType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    let mut largest = 0;
    for (i, p) in fed.realistic.iter().enumerate() {
        // Each region's own counts: the server's for dorset, the generated records' for the rest.
        let mut expected: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        let local = format!("dor-rp{i}");
        let mut on_server = BTreeMap::new();
        for t in &types {
            let n = hfs.count(&format!("{t}?patient=Patient/{local}")).await;
            if n > 0 {
                on_server.insert(t.to_string(), n);
            }
        }
        assert!(on_server.values().sum::<usize>() >= 400, "{on_server:?}");
        expected.insert("dorset", on_server);
        for (code, short) in [("hampshire", "ham"), ("wiltshire", "wil")] {
            expected.insert(
                code,
                held(&fed.data.records[code], &format!("{short}-rp{i}")),
            );
        }
        let r = fed
            .get(0, &format!("/Patient/{}/$everything", p.nhs), Some(&token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        save_artifact(&format!("real-server-everything-{i}"), &r.body);
        no_cut(&r.body);
        for (code, counts) in &expected {
            assert_eq!(&contributed(&r.body, code), counts, "$everything, {code}");
        }
        let shown = entries(&r.body, "match").len();
        assert_eq!(r.body["total"], shown, "total counts what is shown");
        largest = largest.max(expected.values().flat_map(|c| c.values()).sum::<usize>());
        follow_references(&fed, 0, &r.body, &token).await;
        save_artifact(&format!("real-server-everything-{i}"), &r.body);
        // Every type search, the same.
        for t in &types {
            let r = fed
                .get(
                    0,
                    &format!(
                        "/{t}?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C{}",
                        p.nhs
                    ),
                    Some(&token),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{t}: {}", r.body);
            no_cut(&r.body);
            for (code, counts) in &expected {
                let want: BTreeMap<String, usize> = counts
                    .iter()
                    .filter(|(k, _)| k == t)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                assert_eq!(contributed(&r.body, code), want, "{t}, {code}");
            }
            if i == 0 {
                follow_references(&fed, 0, &r.body, &token).await;
                save_artifact(&format!("real-server-search-{t}"), &r.body);
            }
        }
    }
    assert!(
        largest >= 1500,
        "the largest realistic patient holds {largest} items"
    );
}

#[tokio::test]
async fn a_record_larger_than_the_bounds_is_cut_and_the_cut_is_named() {
    let hfs = Hfs::start().await;
    let fed = Builder::new(&["dorset", "hampshire"])
        .patients(4)
        .realistic(1, 300)
        .local_record(&hfs.base, 30_000)
        .record_keys("page_size = 20\nmax_items = 100")
        .timeouts(60_000, 50_000)
        .start()
        .await;
    hfs.load(&fed.data.records["dorset"]).await;
    let nhs = &fed.realistic[0].nhs;
    // Asked at dorset, and at hampshire, to which dorset's federation face passes its cut on.
    for (region, asked_at) in [(0, "dorset"), (1, "hampshire")] {
        let r = fed
            .get(
                region,
                &format!("/Patient/{nhs}/$everything"),
                Some(&fed.token("R8000")),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let cut = outcome_issues(&r.body)
            .into_iter()
            .find(|(code, _, _)| code == "incomplete")
            .unwrap_or_else(|| panic!("asked at {asked_at}: the cut is named"));
        assert!(cut.2.contains("Region dorset"), "{asked_at}: {cut:?}");
        assert!(
            cut.2.contains("more items than one request may take"),
            "{asked_at}: {cut:?}"
        );
        let from_dorset = contributed(&r.body, "dorset").values().sum::<usize>();
        assert!(
            from_dorset < 100,
            "{asked_at}: {from_dorset} of dorset's items"
        );
        let shown = entries(&r.body, "match").len();
        assert_eq!(r.body["total"], shown, "total counts only what is shown");
        save_artifact(&format!("real-server-cut-at-{asked_at}"), &r.body);
    }
}
