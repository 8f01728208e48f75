//! One request's CPU work spread over the cores: a map over contiguous chunks of a list on
//! scoped threads, results in the order of the inputs. Pure (no I/O); used by the merge and
//! by the Bundle writer, where a clinician waits on work that splits by item.
//!
//! Written by hand rather than with rayon: this is the one place the gateway splits work, a
//! second thread pool beside tokio's would compete for the same cores, and scoped threads
//! cost a few tens of microseconds, paid only above [`worth_splitting`].

use std::num::NonZeroUsize;

/// Below this many items the work is done where it is: measured on the merge, three threads
/// cost more than they save at 264 items (eight 20 kB answers: 1.67 ms against 1.52 in place)
/// and save a third at 9,236 (three 2 MB answers: 67 ms against 104).
pub const MIN_ITEMS: usize = 1024;

/// Whether `items` pieces of work are worth spreading over `threads()` threads.
pub fn worth_splitting(items: usize) -> bool {
    #[cfg(test)]
    if SERIAL.with(std::cell::Cell::get) {
        return false;
    }
    items >= MIN_ITEMS && threads() > 1
}

#[cfg(test)]
thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every split on this thread done in place: what a split must equal.
#[cfg(test)]
pub fn serially<R>(f: impl FnOnce() -> R) -> R {
    SERIAL.with(|s| s.set(true));
    let result = f();
    SERIAL.with(|s| s.set(false));
    result
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// `f` applied to every input, in order; spread over the cores when there are enough inputs.
pub fn map<T: Send, R: Send>(inputs: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if !worth_splitting(inputs.len()) {
        return inputs.into_iter().map(f).collect();
    }
    let parts = threads().min(inputs.len());
    let per = inputs.len().div_ceil(parts);
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(parts);
    let mut rest = inputs.into_iter();
    loop {
        let chunk: Vec<T> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let f = &f;
    std::thread::scope(|scope| {
        // The first chunk is done on this thread while the others run.
        let mut chunks = chunks.into_iter();
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for handle in others {
            match handle.join() {
                Ok(part) => out.extend(part),
                // A panic in `f` is the caller's, as it would be without threads.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_inputs_whether_split_or_not() {
        for n in [0, 1, MIN_ITEMS - 1, MIN_ITEMS, 3000, 3001] {
            let inputs: Vec<usize> = (0..n).collect();
            let out = map(inputs, |i| i * 3);
            assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>(), "{n} inputs");
        }
    }

    #[test]
    fn large_inputs_are_spread_over_threads_where_there_are_cores() {
        let ids = map((0..3000).collect::<Vec<usize>>(), |_| {
            format!("{:?}", std::thread::current().id())
        });
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len() > 1, threads() > 1, "{distinct:?}");
        // Small inputs stay on the calling thread.
        let here = format!("{:?}", std::thread::current().id());
        assert!(
            map(vec![1, 2, 3], |_| format!(
                "{:?}",
                std::thread::current().id()
            ))
            .iter()
            .all(|id| *id == here)
        );
    }
}
