//! Fallible maps over long lists on up to 8 cores, for the control plane's big applies.
//!
//! Design: [`try_map`] cuts a list into one contiguous chunk per core (at most 8), maps the
//! first chunk on the calling thread and the others on scoped threads, and joins the results
//! in the list's order. Each chunk stops at its first error, and the chunks' errors are taken
//! in order, so the error returned is the one a one-by-one map would return: the first
//! failing item's. Nothing here is on the per-packet path. Thread-safety: `f` runs on several
//! threads at once, so it must be `Sync`; a panic in any chunk is re-raised on the caller.

/// Maps `items` with `f` (given each item's position in `items`), on several threads when
/// there are at least `min` items; the first item in order that fails is the error.
pub fn try_map<T, R, E, F>(items: &[T], min: usize, f: F) -> Result<Vec<R>, E>
where
    T: Sync,
    R: Send,
    E: Send,
    F: Fn(usize, &T) -> Result<R, E> + Sync,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if items.len() < min.max(2) || threads < 2 {
        return items.iter().enumerate().map(|(i, x)| f(i, x)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let part = |c: usize, xs: &[T]| {
        xs.iter()
            .enumerate()
            .map(|(k, x)| f(c * chunk + k, x))
            .collect::<Result<Vec<R>, E>>()
    };
    std::thread::scope(|scope| {
        let mut chunks = items.chunks(chunk).enumerate();
        // The first chunk on this thread, the others on their own.
        let first = chunks.next();
        let handles: Vec<_> = chunks
            .map(|(c, xs)| scope.spawn(move || part(c, xs)))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        let mut result = Ok(());
        if let Some((c, xs)) = first {
            match part(c, xs) {
                Ok(v) => out.extend(v),
                Err(e) => result = Err(e),
            }
        }
        // Every thread is joined (a panic is re-raised) before an error is returned.
        for h in handles {
            let r = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            match (r, &result) {
                (Ok(v), Ok(())) => out.extend(v),
                (Err(e), Ok(())) => result = Err(e),
                (_, Err(_)) => {}
            }
        }
        result.map(|()| out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_lists_order_and_the_first_failure_in_order_is_the_error() {
        let items: Vec<u32> = (0..10_000).collect();
        let doubled = try_map(&items, 100, |i, &x| {
            assert_eq!(i as u32, x);
            Ok::<u32, usize>(x * 2)
        })
        .unwrap();
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        // Failures in both halves: the earlier one is the error, whatever thread finishes
        // first.
        let e = try_map(&items, 100, |i, &x| {
            if x == 9_990 || x == 4_321 || x == 4_400 {
                Err(i)
            } else {
                Ok(x)
            }
        });
        assert_eq!(e, Err(4_321));
        // Failures only in the second half: a thread of its own on any machine of 2 or more
        // cores, and its error is the one returned.
        let e = try_map(&items, 100, |i, &x| {
            if x == 7_000 || x == 9_990 {
                Err(i)
            } else {
                Ok(x)
            }
        });
        assert_eq!(e, Err(7_000));
        // Below `min`, one by one, with the same answer.
        assert_eq!(
            try_map(&items[..50], 100, |i, &x| if x == 7 {
                Err(i)
            } else {
                Ok(x)
            }),
            Err(7)
        );
        let none: [u32; 0] = [];
        assert_eq!(try_map(&none, 0, |_, &x| Ok::<u32, ()>(x)), Ok(vec![]));
    }
}
