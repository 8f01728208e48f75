//! The `gateway` binary, run as a separate process: certificate generation, configuration
//! checks, and the demo end to end (start, answer across three regions, stop on Ctrl-C).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn gateway_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateway"));
    c.env("RUST_LOG", "info").env_remove("GATEWAY_CONFIG");
    c
}

#[test]
fn certs_init_writes_a_ca_and_region_certificates_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway_bin()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .args(["--regions", "dorset,hampshire"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "dorset/server.pem",
        "dorset/client.key",
        "hampshire/client.pem",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("hampshire/server.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    let pem = std::fs::read(dir.path().join("dorset/client.pem")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let id = gateway::tls::identity::parse_certificate(&der).unwrap();
    assert_eq!(id.region(), Some("dorset"));
    assert!(id.dns_names.contains(&"dorset.gateway.local".to_string()));

    let bad = gateway_bin()
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .args(["--regions", "Not A Region"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn check_names_the_configuration_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let prepared = gateway_bin()
        .args(["demo", "--prepare-only", "--patients", "5", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let good = dir.path().join("dorset.toml");
    let out = gateway_bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string(&good).unwrap().replacen(
        "timeout_ms = 3000",
        "timeout_ms = 60000",
        1,
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = gateway_bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("peers[0].timeout_ms"), "{err}");

    // A missing key file stops the start with the file named.
    std::fs::remove_file(dir.path().join("certs/dorset/client.key")).unwrap();
    let out = gateway_bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client.key"));
}

/// A port base whose nine demo ports are free now.
fn free_port_base() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20_000 + (seed.wrapping_mul(7).wrapping_add(attempt * 211)) % 30_000;
        let ports = [
            base,
            base + 1,
            base + 2,
            base + 100,
            base + 101,
            base + 102,
            base + 200,
            base + 201,
            base + 202,
        ];
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range");
}

#[tokio::test]
async fn the_demo_answers_across_three_regions_and_stops_cleanly_on_ctrl_c() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let mut child = gateway_bin()
        .args([
            "demo",
            "--patients",
            "40",
            "--port-base",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    // The log as it arrives (an operator tails it), and whole at the end.
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            all.push_str(&line);
            all.push('\n');
            let _ = log_tx.send(line);
        }
        all
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo printed its commands");
        lines.push(l);
    }
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert!(curls.len() >= 5, "{lines:?}");
    assert!(curls[0].contains("$everything"));
    assert!(curls[0].contains(&dir.path().join("certs/ca.pem").display().to_string()));

    // Run the first command's request as curl would (same URL, CA and token).
    let url = curls[0].rsplit('\'').nth(1).unwrap().to_owned();
    let token = std::fs::read_to_string(dir.path().join("token.jwt")).unwrap();
    assert!(curls[0].contains(&token), "the token is filled in");
    let ca = std::fs::read(dir.path().join("certs/ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let r = get_json(&client, &url, Some(&token)).await;
    assert_eq!(r.status, http::StatusCode::OK);
    let patient = &entries(&r.body, "match")[0]["resource"];
    assert_eq!(
        region_tags(patient),
        vec!["dorset", "hampshire", "wiltshire"]
    );
    let nhs = patient["id"].as_str().unwrap().to_owned();

    // The operations listener answers for each region.
    let ops = reqwest::get(format!("http://127.0.0.1:{}/readyz", base + 200))
        .await
        .unwrap();
    assert_eq!(ops.status(), http::StatusCode::OK);

    // Every other command the demo printed, a break-glass access and a forged token.
    for c in &curls[1..] {
        let url = c.rsplit('\'').nth(1).unwrap();
        let token = c
            .split("Bearer ")
            .nth(1)
            .map(|rest| rest.split('\'').next().unwrap());
        let r = get_json(&client, url, token).await;
        assert_eq!(r.status, http::StatusCode::OK, "{url}");
        if url.contains("/admin/audit") {
            // The privacy officer sees the accesses to the first patient made just before.
            let events = entries(&r.body, "match");
            assert!(events.len() >= 3, "{}", r.body);
            assert!(
                events
                    .iter()
                    .all(|e| e["resource"]["resourceType"] == "AuditEvent")
            );
        }
    }
    assert!(curls.last().unwrap().contains("/admin/audit"));
    let reason = "Collapsed at home, history unavailable";
    let r = client
        .get(&url)
        .bearer_auth(&token)
        .header("x-break-glass-reason", reason)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), http::StatusCode::OK);
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        get_json(&client, &url, Some(&forged)).await.status,
        http::StatusCode::UNAUTHORIZED
    );

    // The log is written through a buffer, but a line leaves while the gateway runs, not
    // when it stops: the request's lines reach the log before Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the request's log lines arrived while the gateway ran")
        .contains("region answered")
    {}

    // Ctrl-C stops it cleanly.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l == "Stopped."), "{rest:?}");

    // The operational log never carries patient data or secrets: no NHS number, name, date
    // of birth or postcode of any demo patient, no token, no break-glass reason.
    let log = log.join().unwrap();
    assert!(log.contains("gateway listening"), "the log was captured");
    assert!(log.contains("region answered"));
    assert!(log.contains("policy applied"));
    let mut secrets = patient_data(&dir.path().join("data"));
    assert!(secrets.contains(&nhs));
    assert!(secrets.len() > 100, "{} values", secrets.len());
    secrets.insert(token.trim().to_owned());
    secrets.insert(
        std::fs::read_to_string(dir.path().join("governance-token.jwt"))
            .unwrap()
            .trim()
            .to_owned(),
    );
    secrets.insert(forged);
    secrets.insert(reason.to_owned());
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|s| log.contains(s.as_str()))
        .collect();
    assert!(leaked.is_empty(), "reached the operational log: {leaked:?}");

    // The audit trail verifies, with the checkpoint signed at shutdown.
    let config = dir.path().join("dorset.toml");
    let verify = || {
        gateway_bin()
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("intact"), "{stdout}");
    assert!(stdout.contains("signed checkpoint(s) verified"), "{stdout}");

    // Another language's RFC 8785 library (PyPI `rfc8785`) checks the same chain from the
    // export: every record's hash, every link.
    let export = gateway_bin()
        .args(["audit", "export", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let records = export
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(records > 5, "{records} records exported");
    let exported = dir.path().join("trail.jsonl");
    std::fs::write(&exported, &export.stdout).unwrap();
    let independent = |path: &std::path::Path| {
        let out = Command::new(crate::common::python())
            .arg(crate::common::repo_root().join("scripts/verify_audit_chain.py"))
            .arg(path)
            .output()
            .expect("the Python verifier runs (scripts/test installs rfc8785 in .venv)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = independent(&exported);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("{records} records, chain intact")),
        "{said}"
    );
    // It is a real check: one changed field in one exported record is found.
    let text = String::from_utf8(export.stdout.clone()).unwrap();
    let edited = text.replacen("\"released\":", "\"released\":1", 1);
    assert_ne!(edited, text);
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, edited).unwrap();
    let (ok, said) = independent(&tampered);
    assert!(!ok && said.contains("does not match its hash"), "{said}");

    // Edit one row by hand: verify names it.
    let db = rusqlite::Connection::open(dir.path().join("dorset.sqlite")).unwrap();
    let (seq, user): (i64, String) = db
        .query_row(
            "SELECT seq, user_id FROM audit WHERE break_glass_reason IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    db.execute(
        "UPDATE audit SET user_id = 'someone-else' WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!("TAMPERED: record {seq} was modified")),
        "{stdout}"
    );
    db.execute(
        "UPDATE audit SET user_id = ?1 WHERE seq = ?2",
        rusqlite::params![user, seq],
    )
    .unwrap();
    assert!(verify().status.success());

    // Cut the trail short: the chain alone cannot tell, the signed checkpoint does.
    db.execute(
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
        [],
    )
    .unwrap();
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(stdout.contains("truncated"), "{stdout}");
}

/// Every NHS number, name, date of birth and postcode in the demo's records.
fn patient_data(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for region in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(region.unwrap().path().join("record.ndjson")).unwrap();
        for line in text.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            if r["resourceType"] != "Patient" {
                continue;
            }
            for id in r["identifier"].as_array().unwrap() {
                if id["system"] == "https://fhir.nhs.uk/Id/nhs-number" {
                    out.insert(id["value"].as_str().unwrap().to_owned());
                }
            }
            for n in r["name"].as_array().into_iter().flatten() {
                let given = n["given"][0].as_str().unwrap_or("");
                out.insert(format!("{given} {}", n["family"].as_str().unwrap_or("")));
                out.insert(format!("\"{}\"", n["family"].as_str().unwrap_or("")));
            }
            if let Some(d) = r["birthDate"].as_str() {
                out.insert(d.to_owned());
            }
            for a in r["address"].as_array().into_iter().flatten() {
                if let Some(p) = a["postalCode"].as_str() {
                    out.insert(p.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn policy_test_runs_the_cases_and_fails_when_one_fails() {
    let cases = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/tests");
    let out = gateway_bin()
        .args(["policy", "test", "--cases", cases])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(" 0 failed"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.json"),
        r#"[{"name": "students read letters (wrong)", "principal": {"role": "R8004"}, "resource_type": "DocumentReference", "expect": "allow"}]"#,
    )
    .unwrap();
    let out = gateway_bin()
        .args(["policy", "test", "--cases"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("FAILED wrong.json: students read letters (wrong)")
    );
}

#[test]
fn policy_explain_prints_the_decision_and_the_rule_in_plain_english() {
    let out = gateway_bin()
        .args([
            "policy",
            "explain",
            "--role",
            "R8001",
            "--type",
            "Observation",
            "--sensitivity",
            "STD",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Decision: DENY"), "{text}");
    assert!(
        text.contains("sensitive-legally-restricted (40-sensitive.cedar): Legally restricted"),
        "{text}"
    );
    let out = gateway_bin()
        .args([
            "policy",
            "explain",
            "--role",
            "R8001",
            "--type",
            "Observation",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Decision: ALLOW"));
}
