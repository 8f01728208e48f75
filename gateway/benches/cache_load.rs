//! A repeat query at 64 concurrent clients, served from the cache, against the same query with
//! the cache off. Starts the demo's three-region federation in this process (real TLS, real
//! HTTP/2) twice, once per setting, and drives Dorset's clinician face with 64 tasks over one
//! HTTP/2 client each. Prints requests per second and p50/p99 latency.
//!
//! `cargo bench -p gateway --bench cache_load` (release build). The load generator shares the
//! machine's cores with the three gateways, so figures are for comparison, not capacity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::app::Gateway;
use gateway::config::Config;
use gateway::demo::{DemoOptions, prepare};

const CLIENTS: usize = 64;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);

fn free_port_base() -> u16 {
    for base in (20000..40000).step_by(211) {
        let free = (0..3).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 100 + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + 200 + i)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

struct Figures {
    requests: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(cache: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        dir: dir.path().to_path_buf(),
        port_base: free_port_base(),
        patients: 300,
        regions: vec!["dorset".into(), "hampshire".into(), "wiltshire".into()],
    };
    let layout = prepare(&opts).unwrap();
    let mut running = Vec::new();
    for (_, path, _) in &layout.regions {
        if !cache {
            let mut text = std::fs::read_to_string(path).unwrap();
            text.push_str("\n[cache]\nenabled = false\n");
            std::fs::write(path, text).unwrap();
        }
        // Generous limits: the benchmark is the load.
        let mut text = std::fs::read_to_string(path).unwrap();
        text.push_str(
            "\n[limits]\nper_user_per_minute = 100000000\nmax_concurrent_requests = 4096\n",
        );
        std::fs::write(path, text).unwrap();
        let config = Config::load(path).unwrap();
        let gateway = Arc::new(Gateway::from_config(config).await.unwrap());
        running.push(gateway::server::start(gateway).await.unwrap());
    }
    let ca = std::fs::read(&layout.ca).unwrap();
    let url = format!(
        "https://localhost:{}/fhir/Patient/{}/$everything",
        layout.regions[0].2, layout.seen_everywhere
    );
    let token = layout.token.clone();
    let clients: Vec<reqwest::Client> = (0..CLIENTS)
        .map(|_| {
            reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
                .no_proxy()
                .build()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let t = Instant::now();
                    if t.duration_since(started) > WARMUP + MEASURE {
                        return latencies;
                    }
                    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().await.unwrap();
                    if t.duration_since(started) > WARMUP {
                        latencies.push(t.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let figures = Figures {
        requests: all.len(),
        rps: all.len() as f64 / MEASURE.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    };
    for r in running {
        r.shutdown().await;
    }
    figures
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run briefly.
    gateway::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let uncached = rt.block_on(run(false));
    let cached = rt.block_on(run(true));
    println!("repeat $everything at {CLIENTS} concurrent clients, {MEASURE:?} measured:");
    for (name, f) in [("cache off", &uncached), ("cache on", &cached)] {
        println!(
            "  {name:9}: {:7.0} requests/s  p50 {:6.2} ms  p99 {:6.2} ms  ({} requests)",
            f.rps,
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.requests
        );
    }
    println!(
        "  ratio    : {:.2}x the requests/s, p50 {:.2}x",
        cached.rps / uncached.rps,
        cached.p50.as_secs_f64() / uncached.p50.as_secs_f64()
    );
}
