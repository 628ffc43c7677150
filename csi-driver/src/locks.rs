//! At most one operation per volume (or name) at a time. The orchestrator normally guarantees
//! that; when it does not (after a restart, or a second caller), the later call gets ABORTED and
//! retries, as the CSI spec prescribes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::grpc::error::CsiError;

#[derive(Default, Clone)]
pub struct OpLocks {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while the operation runs; released on drop, also when the request is cancelled.
pub struct OpGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl OpLocks {
    /// Takes every key or none.
    pub fn acquire(&self, keys: &[String]) -> Result<OpGuard, CsiError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(taken) = keys.iter().find(|k| busy.contains(*k)) {
            return Err(CsiError::Busy(format!(
                "an operation on {taken} is already in progress; retry later"
            )));
        }
        for key in keys {
            busy.insert(key.clone());
        }
        Ok(OpGuard {
            busy: self.busy.clone(),
            keys: keys.to_vec(),
        })
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            busy.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_aborted_until_the_first_lets_go() {
        let locks = OpLocks::default();
        let first = locks
            .acquire(&["volume a".into(), "name x".into()])
            .unwrap();
        assert!(matches!(
            locks.acquire(&["name x".into()]),
            Err(CsiError::Busy(_))
        ));
        // All or nothing: the failed attempt took nothing.
        assert!(locks.acquire(&["volume b".into()]).is_ok());
        drop(first);
        assert!(locks.acquire(&["name x".into()]).is_ok());
    }
}
