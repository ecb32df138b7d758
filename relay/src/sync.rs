//! Locking shared maps.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the data even if a panicking thread poisoned it: the relay's maps
/// (sessions, slots, rate buckets) stay consistent between statements, so a panic elsewhere
/// must not take every later connection down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
