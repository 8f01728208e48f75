//! The data path alone, in a loop, for a profiler: each region's answer read from its text
//! (as a peer sends it), the view policy, the merge and the Bundle written.
//! `cargo run --release -p gateway --example data_path -- d 20` (scenario a, b, d or m as in
//! `bench/run`, iterations).

#[path = "../benches/common/answers.rs"]
mod answers;

use gateway::access::{Filtered, Gatekeeper, embedded_policy_set};
use gateway::auth::UserContext;
use gateway::merge::{RegionResult, merge_view};
use policy::DecisionPoint;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Each region's answer as the searchset text a peer sends.
fn as_text(
    results: &[RegionResult],
) -> Vec<(gateway::merge::RegionInfo, gateway::fhir::item::Source)> {
    results
        .iter()
        .map(|r| (r.region.clone(), answers::searchset_text(r)))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "d".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let (query, results) = match scenario.as_str() {
        "a" => answers::regions_answers(1, 20 * 1024),
        "b" => answers::regions_answers(8, 20 * 1024),
        "m" => answers::large_answers(11 * 1024 * 1024),
        _ => answers::large_answers(2 * 1024 * 1024),
    };
    let texts = as_text(&results);
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    let set = embedded_policy_set().unwrap();
    let user = answers::clinician();
    let started = std::time::Instant::now();
    let mut out_bytes = 0;
    for _ in 0..n {
        out_bytes += one_request(&query, &texts, &set, &user);
    }
    let per = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    eprintln!(
        "{scenario}: {bytes} bytes in, {} out; {per:.2} ms per request ({:.1} ns/byte)",
        out_bytes / n,
        per * 1e6 / bytes as f64
    );
}

/// One request's data path: read, view policy, merge, write. Its own function so that a
/// profiler can count it alone (`valgrind --tool=callgrind --toggle-collect=*one_request*`).
#[inline(never)]
fn one_request(
    query: &gateway::query::PatientQuery,
    texts: &[(gateway::merge::RegionInfo, gateway::fhir::item::Source)],
    set: &policy::PolicySet,
    user: &UserContext,
) -> usize {
    let mut gk = Gatekeeper::new(set, user, "bench", DecisionPoint::View, "bench");
    let mut report = Filtered::default();
    let results: Vec<RegionResult> = texts
        .iter()
        .map(|(region, text)| {
            let answer = gateway::client::bundle_to_answer(text).expect("a Bundle");
            RegionResult {
                region: region.clone(),
                outcome: Ok(gk.filter(answer, &region.code, &mut report)),
                elapsed_ms: 1,
            }
        })
        .collect();
    let view = merge_view(query, results, answers::view_context());
    let entries = view.written();
    let tail = view.request_entries(&answers::envelope(), |c| c.elapsed_ms);
    gateway::fhir::write_searchset("b", "now", "https://gw/fhir/x", view.total, &entries, &tail)
        .len()
}
