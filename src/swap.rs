//! [`Swap`]: a value readers share and a reload replaces whole.
//!
//! `serve` swaps its signer (keys) and its rewrite engine on SIGHUP. A request or a message
//! takes the current value once and keeps it to the end, so it never sees half a reload.

use std::sync::{Arc, PoisonError, RwLock};

/// A shared value replaced whole on reload.
#[derive(Debug)]
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    /// Shares `value`.
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value; a caller keeps the one it got even if a reload follows.
    pub fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a new value; holders of the old one finish with it.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_keep_the_value_they_took() {
        let swap = Swap::new(1);
        let before = swap.get();
        swap.replace(2);
        assert_eq!((*before, *swap.get()), (1, 2));
    }
}
