//! The load benchmark: the gateway (release build, its own process) against simulated peer
//! regions (real mutual TLS, a set latency and answer size), driven by `oha` at a fixed
//! concurrency; and, in the same run, nginx as a mutual-TLS reverse proxy to the same peer,
//! so that scenario (a) is a ratio, not an absolute time.
//!
//! Scenarios: (a) one peer, a 20 kB answer passed through; (b) eight peers at 20 ms each;
//! (c) the repeat query served from the cache; (d) `$everything` merging three 2 MB answers;
//! (e) the largest realistic patient (issue 10) held in three regions; (m) one 30 MB answer
//! at a time, for what it adds to resident memory; then a soak of (a) sampling the gateway's
//! memory. Prints a table and writes it to `--out`.
//!
//! Run with `bench/run` (builds in release mode first). Not part of the test suite.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    about = "Load benchmark of the gateway against nginx (see the README's Performance section)"
)]
struct Args {
    /// The gateway binary (a release build).
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
    #[arg(long, default_value = "oha")]
    oha: String,
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// Seconds each scenario is driven for.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Concurrent connections of the load generator (scenario d uses at most 8).
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Seconds of the memory soak (scenario a's load); 0 skips it.
    #[arg(long, default_value_t = 300)]
    soak: u64,
    /// Only these scenarios (a, b, c, d, e, m; `none` runs the soak alone); the nginx
    /// reference runs with a, the direct peers with b.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,m")]
    only: Vec<String>,
    /// Where the table is written (Markdown).
    #[arg(long, default_value = "bench/results.md")]
    out: PathBuf,
}

/// What `oha` measured.
#[derive(Debug, Clone, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
    /// CPU time the measured process (tree) spent per answered request, in microseconds.
    cpu_us: Option<f64>,
    /// The whole machine meanwhile: the share of its CPU time busy, and the busy CPU time per
    /// answered request (load generator, peers and the process measured together).
    machine: Option<(f64, f64)>,
}

struct Row {
    scenario: String,
    load: Load,
    peak_rss_mib: f64,
    note: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The fields of `/proc/{pid}/stat` after the command name (the state first).
fn stat_fields(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A process and the processes it started that still run (nginx's workers).
fn tree_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if stat_fields(p).get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
                pids.push(p);
            }
        }
    }
    pids
}

/// A process and the processes it started (nginx's workers), summed.
fn tree_memory_mib(pid: u32) -> (f64, f64) {
    tree_pids(pid)
        .iter()
        .map(|p| memory_mib(*p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// CPU time (user + system) of a process and its children that are still running (nginx's
/// workers), in microseconds.
fn tree_cpu_us(pid: u32) -> f64 {
    let ticks = |p: u32| -> f64 {
        let fields = stat_fields(p);
        // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        let f = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        f(11) + f(12)
    };
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    tree_pids(pid).into_iter().map(ticks).sum::<f64>() * 10_000.0
}

/// The machine's (busy, total) CPU time so far, in clock ticks, from `/proc/stat`.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// How busy the machine was while `load` ran, and its CPU time per request in all.
fn machine_note(load: &Load) -> String {
    load.machine.map_or_else(String::new, |(busy, us)| {
        format!(
            "; machine {:.0}% busy, {us:.0} µs of CPU per request in all",
            busy * 100.0
        )
    })
}

/// A peer's answer for the patient: a searchset Bundle of the patient's record in `region`,
/// grown (items repeated under new ids and identifiers) or cut to about `bytes`.
fn answer_body(data: &gateway::demo::data::DemoData, region: &str, bytes: usize) -> String {
    let nhs = data.seen_everywhere.clone();
    let query = gateway::query::parse_everything(nhs.as_str(), &[], false)
        .expect("a valid query")
        .query;
    let record =
        gateway::record::directory::DirectoryRecord::from_resources(data.records[region].clone())
            .expect("the demo record loads");
    let answer = record.answer(&query);
    let base: Vec<Value> = answer.items.iter().map(|i| i.to_value()).collect();
    let mut items = Vec::new();
    let mut size: usize = answer.patients.iter().map(|p| p.to_string().len()).sum();
    let mut k = 0;
    'grow: loop {
        for item in &base {
            let mut copy = item.clone();
            if k > 0 {
                copy["id"] = json!(format!("{}-{k}", item["id"].as_str().unwrap_or("x")));
                copy["identifier"] = json!([{"system": "urn:bench", "value": format!("{region}-{k}-{}", copy["id"])}]);
            }
            size += copy.to_string().len() + 60;
            items.push(copy);
            if size >= bytes {
                break 'grow;
            }
        }
        k += 1;
    }
    let entries: Vec<Value> = answer
        .patients
        .iter()
        .chain(&items)
        .map(|r| {
            json!({
                "fullUrl": format!("https://{region}.example/fhir/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
                "resource": r,
                "search": {"mode": "match"},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
        .to_string()
}

/// A region's record of one patient as a searchset, each resource once (no growth).
fn record_body(resources: &[Value], region: &str, nhs: &str) -> String {
    let query = gateway::query::parse_everything(nhs, &[], false)
        .expect("a valid query")
        .query;
    let record = gateway::record::directory::DirectoryRecord::from_resources(resources.to_vec())
        .expect("the record loads");
    let answer = record.answer(&query);
    let entry = |r: &Value, mode: &str| {
        json!({
            "fullUrl": format!("https://{region}.example/fhir/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
            "resource": r,
            "search": {"mode": mode},
        })
    };
    let items: Vec<Value> = answer.items.iter().map(|i| i.to_value()).collect();
    let included: Vec<Value> = answer.included.iter().map(|i| i.to_value()).collect();
    let mut entries: Vec<Value> = items.iter().map(|r| entry(r, "match")).collect();
    entries.extend(
        answer
            .patients
            .iter()
            .chain(&included)
            .map(|r| entry(r, "include")),
    );
    json!({"resourceType": "Bundle", "type": "searchset", "total": items.len(), "entry": entries})
        .to_string()
}

/// A simulated peer region: a real mTLS server answering every request with `body` after
/// `latency`.
async fn start_peer(
    dir: &Path,
    region: &str,
    latency: Duration,
    body: Arc<String>,
) -> anyhow::Result<(SocketAddr, tokio::sync::watch::Sender<bool>)> {
    let certs = dir.join("certs");
    let keys = gateway::tls::load_key_material(
        &certs.join(region).join("server.pem"),
        &certs.join(region).join("server.key"),
    )?;
    let ca = gateway::tls::load_certs(&certs.join("ca.pem"))?;
    let tls = gateway::tls::federation_server_config(&keys, &ca, &[])?;
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            http::Response::builder()
                .status(200)
                .header("content-type", "application/fhir+json")
                .body(axum::body::Body::from(body.as_str().to_owned()))
                .expect("a response")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(gateway::server::serve_tls(
        "bench-peer",
        listener,
        gateway::server::fixed_tls(Arc::new(tls)),
        app,
        rx,
        None,
        Arc::default(),
    ));
    Ok((addr, stop))
}

/// The reference for scenario (b): the eight peers asked directly and at once, as the gateway
/// asks them (mutual TLS, its client certificate, kept-alive connections), one round at a
/// time for `seconds`; each round's time is its slowest peer's. Bodies are read, not parsed.
async fn slowest_peer(
    dir: &Path,
    peers: &[(String, SocketAddr)],
    seconds: u64,
) -> anyhow::Result<Load> {
    let certs = dir.join("certs");
    let keys = gateway::tls::load_key_material(
        &certs.join("bench/client.pem"),
        &certs.join("bench/client.key"),
    )?;
    let ca = gateway::tls::load_certs(&certs.join("ca.pem"))?;
    let mut clients = Vec::new();
    for (code, addr) in peers {
        let tls = gateway::tls::peer_client_config(
            &ca,
            &[],
            &keys,
            &format!("urn:gateway:region:{code}"),
        )?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()?;
        clients.push((client, format!("https://localhost:{}/fhir/x", addr.port())));
    }
    let round = || async {
        let started = Instant::now();
        let asks = clients.iter().map(|(c, url)| async move {
            let r = c.get(url).send().await?.error_for_status()?;
            r.bytes().await.map(|b| b.len())
        });
        let answers = futures::future::join_all(asks).await;
        let ok = answers.iter().all(Result::is_ok);
        (started.elapsed().as_secs_f64() * 1000.0, ok)
    };
    for _ in 0..20 {
        round().await;
    }
    let mut times = Vec::new();
    let mut errors = 0;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let (ms, ok) = round().await;
        if ok {
            times.push(ms);
        } else {
            errors += 1;
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Load {
        rps: times.len() as f64 / seconds as f64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        requests: times.len() as u64 + errors,
        errors,
        cpu_us: None,
        machine: None,
    })
}

struct Setup {
    dir: PathBuf,
    token: String,
    nhs: String,
}

struct Running {
    child: tokio::process::Child,
    url: String,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: a graceful stop.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// Starts the gateway with these peers (region code, address) and waits until it is ready.
async fn start_gateway(
    args: &Args,
    setup: &Setup,
    name: &str,
    peers: &[(String, SocketAddr)],
    cache: bool,
) -> anyhow::Result<Running> {
    let (c, f, o) = (free_port()?, free_port()?, free_port()?);
    let mut text = format!(
        r#"[region]
code = "bench"
name = "Bench"
base_url = "https://localhost:{c}/fhir"

[listen]
clinician = "127.0.0.1:{c}"
federation = "127.0.0.1:{f}"
operations = "127.0.0.1:{o}"

[tls]
ca = "certs/ca.pem"
server_cert = "certs/bench/server.pem"
server_key = "certs/bench/server.key"
client_cert = "certs/bench/client.pem"
client_key = "certs/bench/client.key"

[record]
directory = "record"

[auth]
issuer = "https://idp.bench.local"
audience = "federation-gateway"
public_keys_pem = "idp.pem"

[store]
sqlite = "{name}.sqlite"

[cache]
enabled = {cache}

[limits]
per_user_per_minute = 100000000
# Every load comes from one address (the harness's): the limit before authentication is
# lifted, as it would be behind a balancer.
per_address_per_second = 100000000
max_concurrent_requests = 4096

[fanout]
deadline_ms = 10000
"#
    );
    for (code, addr) in peers {
        text.push('\n');
        text.push_str(
            &gateway::config::ConfigPeer {
                region: code.clone(),
                name: code.clone(),
                url: format!("https://localhost:{}/fhir", addr.port()),
                identity: format!("urn:gateway:region:{code}"),
                timeout_ms: 9000,
            }
            .to_toml(),
        );
    }
    let config = setup.dir.join(format!("{name}.toml"));
    std::fs::write(&config, text)?;
    let log = std::fs::File::create(setup.dir.join(format!("{name}.log")))?;
    let child = tokio::process::Command::new(&args.gateway)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.gateway.display()))?;
    let ready = format!("http://127.0.0.1:{o}/readyz");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the gateway did not become ready; see {name}.log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Running {
        child,
        url: format!(
            "https://localhost:{c}/fhir/Patient/{}/$everything",
            setup.nhs
        ),
    })
}

/// nginx as a mutual-TLS reverse proxy to one peer, with the gateway's certificates.
async fn start_nginx(args: &Args, setup: &Setup, peer: SocketAddr) -> anyhow::Result<Running> {
    let d = setup.dir.display();
    let port = free_port()?;
    let tmp = setup.dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    let user = if is_root() { "user root;" } else { "" };
    let conf = format!(
        r#"{user}
worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/nginx-access.log;
  client_body_temp_path {d}/nginx-tmp/body;
  proxy_temp_path {d}/nginx-tmp/proxy;
  fastcgi_temp_path {d}/nginx-tmp/fastcgi;
  uwsgi_temp_path {d}/nginx-tmp/uwsgi;
  scgi_temp_path {d}/nginx-tmp/scgi;
  upstream peer {{ server 127.0.0.1:{peer_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/certs/bench/server.pem;
    ssl_certificate_key {d}/certs/bench/server.key;
    location / {{
      proxy_pass https://peer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate {d}/certs/bench/client.pem;
      proxy_ssl_certificate_key {d}/certs/bench/client.key;
      proxy_ssl_trusted_certificate {d}/certs/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name peer1.gateway.local;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_buffers 32 16k;
    }}
  }}
}}
"#,
        peer_port = peer.port()
    );
    let path = setup.dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = tokio::process::Command::new(&args.nginx)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.nginx))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nginx did not start; see nginx-error.log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Running {
        child,
        url: format!(
            "https://localhost:{port}/fhir/Patient/{}/$everything",
            setup.nhs
        ),
    })
}

/// Running as root (nginx then needs `user root;` to read the key files in a private dir).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// [`drive`], and the CPU time process `pid` (with its children) spent per answered request.
async fn measure(
    args: &Args,
    setup: &Setup,
    url: &str,
    seconds: u64,
    concurrency: u32,
    pid: u32,
) -> anyhow::Result<Load> {
    let before = tree_cpu_us(pid);
    let machine_before = machine_ticks();
    let mut load = drive(args, setup, url, seconds, concurrency, None).await?;
    let spent = tree_cpu_us(pid) - before;
    let machine_after = machine_ticks();
    let answered = load.requests.saturating_sub(load.errors);
    load.cpu_us = (answered > 0).then(|| spent / answered as f64);
    let (busy, total) = (
        machine_after.0 - machine_before.0,
        machine_after.1 - machine_before.1,
    );
    load.machine =
        (answered > 0 && total > 0.0).then(|| (busy / total, busy * 10_000.0 / answered as f64));
    Ok(load)
}

/// Drives `url` with oha for `seconds` at `concurrency`; samples `pid`'s memory meanwhile.
async fn drive(
    args: &Args,
    setup: &Setup,
    url: &str,
    seconds: u64,
    concurrency: u32,
    sample: Option<(u32, &mut Vec<(f64, f64)>)>,
) -> anyhow::Result<Load> {
    let mut cmd = tokio::process::Command::new(&args.oha);
    cmd.args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{seconds}s"))
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("--cacert")
        .arg(setup.dir.join("certs/ca.pem"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", setup.token))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} (cargo install oha)", args.oha))?;
    let started = Instant::now();
    let output = match sample {
        Some((pid, samples)) => {
            let wait = child.wait_with_output();
            tokio::pin!(wait);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    out = &mut wait => break out?,
                    _ = tick.tick() => samples.push((started.elapsed().as_secs_f64(), memory_mib(pid).0)),
                }
            }
        }
        None => child.wait_with_output().await?,
    };
    if !output.status.success() {
        bail!(
            "oha failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&output.stdout).context("oha's JSON output")?;
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let ok = statuses.get("200").and_then(Value::as_u64).unwrap_or(0);
    let all: u64 = statuses.values().filter_map(Value::as_u64).sum();
    // Requests still in flight when the time is up are cut off by oha, not failed.
    let transport_errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let ms = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(Load {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0) * ok as f64
            / (all.max(1)) as f64,
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        requests: all,
        errors: all - ok + transport_errors,
        cpu_us: None,
        machine: None,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".into(), |s| s.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem:.0} GiB")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gateway::tls::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("record"))?;
    std::fs::write(dir.join("record/record.ndjson"), "")?;
    let peers: Vec<String> = (1..=8).map(|i| format!("peer{i}")).collect();
    let mut regions = vec!["bench".to_owned()];
    regions.extend(peers.iter().cloned());
    gateway::tls::devca::init_dir(&dir.join("certs"), &regions, &["localhost".into()], 2)?;
    let idp = rcgen::KeyPair::generate()?;
    std::fs::write(dir.join("idp.pem"), idp.public_key_pem())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = gateway::auth::mint_dev_token(
        &gateway::auth::DevTokenClaims {
            iss: "https://idp.bench.local".into(),
            aud: "federation-gateway".into(),
            sub: "bench-clinician".into(),
            role: "R8000".into(),
            org: "RBD".into(),
            purpose_of_use: "TREAT".into(),
            iat: now,
            nbf: now - 10,
            exp: now + 24 * 3600,
        },
        &idp.serialize_pem(),
        None,
    )?;
    let data = gateway::demo::data::generate(&peers, 20, 11);
    let setup = Setup {
        dir: dir.clone(),
        token,
        nhs: data.seen_everywhere.as_str().to_owned(),
    };
    eprintln!("bench: working in {}", dir.display());

    let small: Vec<Arc<String>> = peers
        .iter()
        .map(|p| Arc::new(answer_body(&data, p, 20 * 1024)))
        .collect();
    eprintln!("bench: a peer's small answer is {} bytes", small[0].len());
    let mut stops = Vec::new();
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let (addr, stop) = start_peer(&dir, p, Duration::ZERO, small[i].clone()).await?;
        fast.push((p.clone(), addr));
        stops.push(stop);
        let (addr, stop) = start_peer(&dir, p, Duration::from_millis(20), small[i].clone()).await?;
        slow.push((p.clone(), addr));
        stops.push(stop);
    }
    let mut large = Vec::new();
    for p in peers.iter().take(3) {
        let body = Arc::new(answer_body(&data, p, 2 * 1024 * 1024));
        eprintln!("bench: {p}'s large answer is {} bytes", body.len());
        let (addr, stop) = start_peer(&dir, p, Duration::ZERO, body).await?;
        large.push((p.clone(), addr));
        stops.push(stop);
    }

    let (secs, conc) = (args.duration, args.concurrency);
    let mut rows = Vec::new();

    let wanted = |s: &str| args.only.iter().any(|o| o == s);
    // The reference: nginx in front of the same peer.
    let mut reference = Load::default();
    if wanted("a") {
        eprintln!("bench: (a) nginx");
        let nginx = start_nginx(&args, &setup, fast[0].1).await?;
        let _ = drive(&args, &setup, &nginx.url, 2, conc, None).await?;
        reference = measure(&args, &setup, &nginx.url, secs, conc, nginx.pid()).await?;
        let nginx_mem = tree_memory_mib(nginx.pid()).1;
        nginx.stop().await;
        rows.push(Row {
            scenario: "(a) reference: nginx, mTLS reverse proxy to one peer, 20 kB".into(),
            load: reference.clone(),
            peak_rss_mib: nginx_mem,
            note: format!("1.00{}", machine_note(&reference)),
        });
    }

    let run = |name: &'static str,
               label: String,
               peers: Vec<(String, SocketAddr)>,
               cache: bool,
               conc: u32| {
        let (args, setup) = (&args, &setup);
        async move {
            eprintln!("bench: {label}");
            let gw = start_gateway(args, setup, name, &peers, cache).await?;
            eprintln!("bench: gateway pid {}", gw.pid());
            let _ = drive(args, setup, &gw.url, 2, conc, None).await?;
            let load = measure(args, setup, &gw.url, secs, conc, gw.pid()).await?;
            let peak_rss_mib = memory_mib(gw.pid()).1;
            gw.stop().await;
            anyhow::Ok(Row {
                scenario: label,
                load,
                peak_rss_mib,
                note: String::new(),
            })
        }
    };
    let mut a = Load::default();
    if wanted("a") {
        let mut row = run(
            "a",
            "(a) gateway: one peer, 20 kB".into(),
            fast[..1].to_vec(),
            false,
            conc,
        )
        .await?;
        a = row.load.clone();
        row.note = format!(
            "{:.2} of nginx's throughput{}",
            row.load.rps / reference.rps,
            machine_note(&row.load)
        );
        rows.push(row);
    }
    if wanted("b") {
        // The reference: the slowest of the eight peers, asked directly.
        eprintln!("bench: (b) the eight peers asked directly");
        let direct = slowest_peer(&dir, &slow, secs).await?;
        let slowest = direct.p50_ms;
        rows.push(Row {
            scenario:
                "(b) reference: the eight peers asked at once, directly (the slowest of each round)"
                    .into(),
            load: direct,
            peak_rss_mib: f64::NAN,
            note: "20 ms latency set at each peer".into(),
        });
        let above = |load: &Load| {
            format!(
                "p50 is {:.1} ms above the slowest peer's ({slowest:.1} ms)",
                load.p50_ms - slowest
            )
        };
        // At one connection: what the fan-out adds to a clinician's wait.
        let mut row = run(
            "b1",
            "(b) gateway: eight peers at 20 ms, one connection".into(),
            slow.clone(),
            false,
            1,
        )
        .await?;
        row.note = above(&row.load);
        rows.push(row);
        // At the benchmark's concurrency: eight answers to parse and merge per request.
        let mut row = run(
            "b",
            format!("(b) gateway: eight peers at 20 ms, 20 kB each, {conc} connections"),
            slow.clone(),
            false,
            conc,
        )
        .await?;
        row.note = above(&row.load);
        rows.push(row);
    }
    if wanted("c") {
        let mut row = run(
            "c",
            "(c) gateway: (a) repeated, served from the cache".into(),
            fast[..1].to_vec(),
            true,
            conc,
        )
        .await?;
        row.note = if a.rps > 0.0 {
            format!("{:.2} times (a)'s throughput", row.load.rps / a.rps)
        } else {
            String::new()
        };
        rows.push(row);
    }
    if wanted("d") {
        let mut row = run(
            "d",
            "(d) gateway: $everything merging three 2 MB answers".into(),
            large.clone(),
            false,
            conc.min(8),
        )
        .await?;
        row.note = format!("{} concurrent", conc.min(8));
        rows.push(row);
    }

    // Soak: (a)'s load for a while, the gateway's resident memory sampled every 5 s.
    if wanted("e") {
        // Issue 10's largest realistic patient, held in three regions (each peer answers its
        // region's record of the patient as a FHIR server's $everything would).
        let names: Vec<String> = peers.iter().take(3).cloned().collect();
        let (records, patients) = gateway::demo::realistic::generate(
            &names,
            gateway::demo::REALISTIC_PATIENTS,
            gateway::demo::REALISTIC_ITEMS_PER_REGION,
            gateway::demo::DEMO_SEED,
        );
        let largest = patients.last().expect("realistic patients");
        let mut realistic = Vec::new();
        let mut bytes = 0;
        for p in &names {
            let body = Arc::new(record_body(&records[p], p, largest.nhs.as_str()));
            bytes += body.len();
            let (addr, stop) = start_peer(&dir, p, Duration::ZERO, body).await?;
            realistic.push((p.clone(), addr));
            stops.push(stop);
        }
        let setup_e = Setup {
            dir: dir.clone(),
            token: setup.token.clone(),
            nhs: largest.nhs.as_str().to_owned(),
        };
        eprintln!("bench: (e) the largest realistic patient, {bytes} bytes from three regions");
        let gw = start_gateway(&args, &setup_e, "e", &realistic, false).await?;
        let _ = drive(&args, &setup_e, &gw.url, 2, conc.min(8), None).await?;
        let load = measure(&args, &setup_e, &gw.url, secs, conc.min(8), gw.pid()).await?;
        let peak_rss_mib = memory_mib(gw.pid()).1;
        gw.stop().await;
        rows.push(Row {
            scenario: format!(
                "(e) gateway: the largest realistic patient's $everything, three regions ({:.1} MB in all), {} connections",
                bytes as f64 / 1e6,
                conc.min(8)
            ),
            load,
            peak_rss_mib,
            note: String::new(),
        });
    }
    if wanted("m") {
        // One valid 30 MB answer at a time: what it adds to the gateway's resident memory.
        let body = Arc::new(answer_body(&data, &peers[0], 30 * 1024 * 1024));
        let size = body.len();
        let (addr, stop) = start_peer(&dir, &peers[0], Duration::ZERO, body).await?;
        stops.push(stop);
        eprintln!("bench: (m) one {size}-byte answer at a time");
        let gw = start_gateway(&args, &setup, "m", &[(peers[0].clone(), addr)], false).await?;
        let idle = memory_mib(gw.pid()).0;
        let load = measure(&args, &setup, &gw.url, secs, 1, gw.pid()).await?;
        let peak = memory_mib(gw.pid()).1;
        gw.stop().await;
        rows.push(Row {
            scenario: format!(
                "(m) gateway: one peer's {:.0} MB answer, one request at a time",
                size as f64 / 1e6
            ),
            load,
            peak_rss_mib: peak,
            note: format!(
                "peak resident memory {:.0} MiB above idle ({idle:.0} MiB): {:.1} times the answer",
                peak - idle,
                (peak - idle) * 1024.0 * 1024.0 / size as f64
            ),
        });
    }

    let mut soak_line = String::from("not run (--soak 0)");
    if args.soak > 0 {
        eprintln!("bench: soak, {} s of (a)", args.soak);
        let gw = start_gateway(&args, &setup, "soak", &fast[..1], false).await?;
        let mut samples = Vec::new();
        let load = drive(
            &args,
            &setup,
            &gw.url,
            args.soak,
            conc,
            Some((gw.pid(), &mut samples)),
        )
        .await?;
        gw.stop().await;
        // After the first minute (warm-up: pools, caches and the allocator settle).
        let start = 60.0_f64.min(args.soak as f64 / 2.0);
        let settled: Vec<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= start)
            .collect();
        if let (Some(first), Some(last)) = (settled.first(), settled.last()) {
            let max = settled.iter().map(|s| s.1).fold(0.0, f64::max);
            // Resident memory at each minute, and the least-squares trend over the settled part:
            // flat memory has a trend near zero, a leak one that grows with the requests served.
            let by_minute: Vec<String> = (1..)
                .map(|m| m as f64 * 60.0)
                .take_while(|t| *t <= args.soak as f64)
                .filter_map(|t| {
                    samples
                        .iter()
                        .find(|(at, _)| *at >= t)
                        .map(|(_, m)| format!("{m:.1}"))
                })
                .collect();
            let n = settled.len() as f64;
            let (mt, mm) = (
                settled.iter().map(|s| s.0).sum::<f64>() / n,
                settled.iter().map(|s| s.1).sum::<f64>() / n,
            );
            let var: f64 = settled.iter().map(|s| (s.0 - mt).powi(2)).sum();
            let cov: f64 = settled.iter().map(|s| (s.0 - mt) * (s.1 - mm)).sum();
            let per_minute = if var > 0.0 { cov / var * 60.0 } else { 0.0 };
            soak_line = format!(
                "{} s at {conc} connections, {:.0} requests/s, {} requests: resident memory {:.1} MiB after the first minute, {:.1} MiB at the end ({:+.1}%), at most {max:.1} MiB; trend {per_minute:+.2} MiB a minute; at each minute: {} MiB",
                args.soak,
                load.rps,
                load.requests,
                first.1,
                last.1,
                (last.1 - first.1) / first.1 * 100.0,
                by_minute.join(", ")
            );
        }
    }
    drop(stops);

    let mut table = String::new();
    table.push_str(&format!(
        "Machine: {}. Each scenario: {secs} s at {conc} connections (oha, HTTP/1.1 over TLS), after a 2 s warm-up; the gateway is a release build with its audit trail (SQLite, synchronous) and access log on.\n\n",
        machine()
    ));
    table.push_str("| scenario | requests/s | p50 ms | p99 ms | errors | CPU µs per request | peak memory MiB | against the reference |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {} of {} | {} | {} | {} |\n",
            r.scenario,
            r.load.rps,
            r.load.p50_ms,
            r.load.p99_ms,
            r.load.errors,
            r.load.requests,
            r.load
                .cpu_us
                .map_or_else(|| "-".into(), |c| format!("{c:.0}")),
            if r.peak_rss_mib.is_nan() {
                "-".into()
            } else {
                format!("{:.1}", r.peak_rss_mib)
            },
            r.note
        ));
    }
    table.push_str(&format!("\nMemory soak: {soak_line}.\n"));
    println!("{table}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &table)?;
    eprintln!("bench: written to {}", args.out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
