//! What CI can check of the Docker deployment without a Docker engine: the binary the image
//! runs starts with the compose configuration (`docker/config/*.toml`) and the material the
//! compose `init` service makes, two dorset replicas sharing one PostgreSQL schema as in the
//! compose file. (`scripts/check_compose.py` checks that the compose file parses and that
//! every path it names exists.)
//!
//! Only what cannot hold outside the compose network is changed: the listen addresses (free
//! loopback ports instead of 0.0.0.0:8443 and so on), and the PostgreSQL server (the test
//! server on loopback instead of `host=postgres` with its own CA).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

fn gateway_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateway"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose configuration of `code`, with loopback listeners, the test PostgreSQL, and the
/// container's writable volume (`/var/lib/gateway`) at `state`.
fn local_config(compose: &str, schema: &str, state: &Path) -> (String, u16) {
    let conninfo = std::env::var("GATEWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let ops = free_port();
    let mut text = String::new();
    for line in compose.lines() {
        let line = match line.split_once(" = ") {
            Some(("clinician", _)) => format!("clinician = \"127.0.0.1:{}\"", free_port()),
            Some(("federation", _)) => format!("federation = \"127.0.0.1:{}\"", free_port()),
            Some(("operations", _)) => format!("operations = \"127.0.0.1:{ops}\""),
            Some(("postgres", _)) => format!("postgres = \"{conninfo}\""),
            Some(("postgres_schema", _)) => format!("postgres_schema = \"{schema}\""),
            Some(("postgres_ca", _)) => continue,
            Some(("checkpoint_file", path)) => {
                let path = path.trim_matches('"');
                let on_volume = path
                    .strip_prefix("/var/lib/gateway/")
                    .expect("the compose configuration writes on the state volume");
                format!("checkpoint_file = {:?}", state.join(on_volume))
            }
            _ => line.to_owned(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    (text, ops)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_binary_starts_with_the_compose_configuration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    // What the compose `init` service runs.
    let demo = dir.path().join("demo");
    run(gateway_bin()
        .args(["demo", "--prepare-only", "--patients", "30", "--dir"])
        .arg(&demo)
        .args(["--regions", "dorset,hampshire,wiltshire"]));
    run(gateway_bin()
        .args(["certs", "init", "--dir"])
        .arg(demo.join("pg"))
        .args(["--regions", "postgres", "--hosts", "postgres"]));
    std::fs::create_dir_all(dir.path().join("config")).unwrap();

    let schema = format!("gw_compose_{}", uuid::Uuid::new_v4().simple());
    // A replica started on the compose configuration with free loopback ports of its own.
    let start = |name: &str, code: &str| {
        let compose =
            std::fs::read_to_string(root.join(format!("docker/config/{code}.toml"))).unwrap();
        assert!(compose.contains("../demo/certs/ca.pem"), "paths as mounted");
        let state = dir.path().join(format!("state-{name}"));
        std::fs::create_dir_all(&state).unwrap();
        let (text, ops) = local_config(&compose, &format!("{schema}_{code}"), &state);
        let path = dir.path().join(format!("config/{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let child = gateway_bin()
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, ops)
    };
    let mut children = Vec::new();
    // dorset twice (the replicas behind the load balancer), hampshire and wiltshire once.
    for (name, code) in [
        ("dorset-a", "dorset"),
        ("dorset-b", "dorset"),
        ("hampshire", "hampshire"),
        ("wiltshire", "wiltshire"),
    ] {
        let (child, ops) = start(name, code);
        children.push((name, code, child, ops));
    }
    let client = reqwest::Client::new();
    for (name, code, child, ops) in &mut children {
        let deadline = Instant::now() + Duration::from_secs(30);
        // A free port found here can be taken by another test before the replica binds it:
        // then it is started again on other ports (a few times), as nothing else is wrong.
        let mut restarts = 0;
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{ops}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                if err.contains("Address already in use") && restarts < 3 {
                    restarts += 1;
                    (*child, *ops) = start(name, code);
                    continue;
                }
                panic!("{name} exited ({status}) with the compose configuration:\n{err}");
            }
            assert!(Instant::now() < deadline, "{name} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (name, _, _, ops) in &children {
        // The image's HEALTHCHECK.
        run(gateway_bin().args(["probe", &format!("http://127.0.0.1:{ops}/readyz")]));
        // What each replica writes is on its own volume, found writable at start.
        assert!(
            dir.path()
                .join(format!("state-{name}/checkpoints.jsonl"))
                .is_file(),
            "{name}"
        );
    }
    let dead = free_port();
    let out = gateway_bin()
        .args(["probe", &format!("http://127.0.0.1:{dead}/readyz")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a probe of nothing fails");
    for (_, _, child, _) in &mut children {
        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "a clean stop on SIGTERM: {status}");
    }
    let conninfo = std::env::var("GATEWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    for code in ["dorset", "hampshire", "wiltshire"] {
        gateway::store::postgres::PostgresStore::connect(&conninfo, &format!("{schema}_{code}"))
            .await
            .unwrap()
            .drop_schema()
            .await
            .unwrap();
    }
}

#[test]
fn a_gateway_whose_checkpoint_file_cannot_be_written_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    run(gateway_bin()
        .args(["demo", "--prepare-only", "--patients", "5", "--dir"])
        .arg(dir.path()));
    let config = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "toml"))
        .unwrap();
    // A directory that is a file: not writable even for root (as a read-only mount is not).
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[audit]\ncheckpoint_file = \"not-a-dir/checkpoints.jsonl\"\n");
    assert!(!text.contains("\n[audit]\n[audit]"));
    std::fs::write(&config, text).unwrap();
    let out = gateway_bin()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint_file") && err.contains("writable volume"),
        "{err}"
    );
}
