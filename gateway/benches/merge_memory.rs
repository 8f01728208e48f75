//! Peak memory of merging three regions' ~2 MB `$everything` answers, beyond what the inputs
//! already hold, measured with a counting allocator (peak_alloc). A separate binary, so that
//! the counting allocator does not slow the timed benchmarks in `hot_paths`.
//! `cargo bench -p gateway --bench merge_memory`

#[path = "common/answers.rs"]
mod answers;

use answers::context as ctx;
use gateway::merge::merge;

#[global_allocator]
static PEAK: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

fn main() {
    let (query, results) = answers::large_answers(2 * 1024 * 1024);
    let bytes: usize = results
        .iter()
        .flat_map(|r| {
            r.outcome
                .as_ref()
                .map(|a| a.items.clone())
                .unwrap_or_default()
        })
        .map(|v| v.bytes())
        .sum();
    // One timed run too, separating the merge from freeing its result (criterion's figure
    // in hot_paths includes both).
    let timed_input = results.clone();
    let started = std::time::Instant::now();
    let merged = merge(&query, timed_input, ctx());
    let merging = started.elapsed();
    let started = std::time::Instant::now();
    drop(merged);
    let freeing = started.elapsed();
    println!(
        "one run: merge {:.1} ms, then freeing the result {:.1} ms",
        merging.as_secs_f64() * 1e3,
        freeing.as_secs_f64() * 1e3
    );
    PEAK.reset_peak_usage();
    let before = PEAK.current_usage();
    let merged = merge(&query, results, ctx());
    let peak = PEAK.peak_usage().saturating_sub(before);
    println!(
        "merge of three answers ({:.1} MB of JSON, {} entries): peak {:.1} MiB above the inputs",
        bytes as f64 / 1e6,
        merged.total,
        peak as f64 / (1024.0 * 1024.0)
    );
}
