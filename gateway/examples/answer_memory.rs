//! Issue 16's memory bound on the data path alone: one region's answer of about 30 MB, read
//! from its text, filtered, merged and written, with the peak of live heap bytes above the
//! text counted (peak_alloc: live bytes do not depend on the allocator; what mimalloc keeps
//! beyond them shows in `bench/run`'s resident figure).
//! `cargo run --release -p gateway --example answer_memory -- 30` (MiB of answer).

#[path = "../benches/common/answers.rs"]
mod answers;

use gateway::access::{Filtered, Gatekeeper, embedded_policy_set};
use gateway::merge::{RegionResult, merge_view};
use policy::DecisionPoint;

#[global_allocator]
static PEAK: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    // With ANSWER_FILE, the answer's text is kept in that file and read from it when it is
    // there: a heap profiler (valgrind's massif) then sees the data path's peak, not the
    // generator's.
    let file = std::env::var_os("ANSWER_FILE").map(std::path::PathBuf::from);
    let saved = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
    let size = if saved.is_some() {
        0
    } else {
        mib * 1024 * 1024
    };
    let (query, mut results) = answers::large_answers(size);
    results.truncate(1);
    let region = results[0].region.clone();
    let text = match saved {
        Some(text) => std::sync::Arc::new(text),
        None => {
            let text = answers::searchset_text(&results[0]);
            if let Some(f) = &file {
                std::fs::write(f, text.as_bytes()).expect("the answer file written");
            }
            text
        }
    };
    drop(results);
    let set = embedded_policy_set().unwrap();
    let user = answers::clinician();
    PEAK.reset_peak_usage();
    let before = PEAK.current_usage();
    let mut gk = Gatekeeper::new(&set, &user, "bench", DecisionPoint::View, "bench");
    let mut report = Filtered::default();
    let answer = gateway::client::bundle_to_answer(&text).expect("a Bundle");
    let after_read = PEAK.current_usage() - before;
    let peak_read = PEAK.peak_usage() - before;
    let results = vec![RegionResult {
        region: region.clone(),
        outcome: Ok(gk.filter(answer, &region.code, &mut report)),
        elapsed_ms: 1,
    }];
    let view = merge_view(&query, results, answers::view_context());
    let after_merge = PEAK.current_usage() - before;
    let peak_merge = PEAK.peak_usage() - before;
    let entries = view.written();
    let tail = view.request_entries(&answers::envelope(), |c| c.elapsed_ms);
    let after_entries = PEAK.current_usage() - before;
    // As the gateway writes it: the shared entries and the envelope, joined only as the body
    // is sent.
    let body = gateway::fhir::searchset_bytes(
        "b",
        "now",
        &[("self", "https://gw/fhir/x".to_owned())],
        view.total,
        &entries,
        &tail,
    );
    let after_write = PEAK.current_usage() - before;
    let peak = PEAK.peak_usage() - before;
    let mb = |n: usize| n as f64 / (1024.0 * 1024.0);
    let held: usize = entries.texts().iter().map(|t| t.held()).sum();
    println!(
        "entries: {:.1} MiB written out, {:.1} MiB of it held of their own (the rest runs of the answer)",
        mb(entries.bytes()),
        mb(held)
    );
    println!(
        "answer {:.1} MiB, {} entries, Bundle written {:.1} MiB",
        mb(text.len()),
        view.total,
        mb(body.len())
    );
    println!(
        "peak while reading {:.1} MiB, while merging {:.1} MiB",
        mb(peak_read),
        mb(peak_merge)
    );
    println!(
        "live above the text: read {:.1}, merged {:.1}, with the request entries {:.1}, written {:.1}; peak {:.1} MiB ({:.2} times the answer)",
        mb(after_read),
        mb(after_merge),
        mb(after_entries),
        mb(after_write),
        mb(peak),
        peak as f64 / text.len() as f64
    );
}
