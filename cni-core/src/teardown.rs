//! Teardown that keeps going: every DEL, GC, leave and reconcile tries each step, collects what
//! failed, and reports it all together. One bad step (a missing link, a refused nftables batch,
//! a peer the kernel rejects) never stops the steps after it.

use std::error::Error;

use crate::error::chain;

/// The failures of a keep-going operation.
#[derive(Debug)]
pub struct Failures<E> {
    errors: Vec<E>,
    what: &'static str,
}

impl<E: Error> Default for Failures<E> {
    fn default() -> Self {
        Failures::new("teardown step")
    }
}

impl<E: Error> Failures<E> {
    /// `what` names a step in the warning logged for each failure ("teardown step", "peer entry").
    pub fn new(what: &'static str) -> Failures<E> {
        Failures {
            errors: Vec::new(),
            what,
        }
    }

    /// The value of a step that worked; a failed step is logged and kept.
    pub fn note<T, F: Into<E>>(&mut self, result: Result<T, F>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let e = e.into();
                tracing::warn!(error = %chain(&e), "{} failed, continuing", self.what);
                self.errors.push(e);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Ok if nothing failed; the one error if one did; `several(all)` otherwise.
    pub fn finish_with(mut self, several: impl FnOnce(Vec<E>) -> E) -> Result<(), E> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(self.errors.remove(0)),
            _ => Err(several(self.errors)),
        }
    }

    /// Every failure, for callers that report them one by one.
    pub fn into_errors(self) -> Vec<E> {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("step {0}")]
        One(u32),
        #[error("{} failures", .0.len())]
        Many(Vec<E>),
    }

    #[test]
    fn keeps_going_and_reports_all() {
        let mut f: Failures<E> = Failures::default();
        assert_eq!(f.note(Ok::<_, E>(1)), Some(1));
        assert!(f.note(Err::<(), _>(E::One(2))).is_none());
        assert!(!f.is_empty() && f.len() == 1);
        assert!(matches!(f.finish_with(E::Many), Err(E::One(2))));

        let mut f: Failures<E> = Failures::default();
        f.note(Err::<(), _>(E::One(1)));
        f.note(Err::<(), _>(E::One(2)));
        assert!(matches!(f.finish_with(E::Many), Err(E::Many(v)) if v.len() == 2));
        assert!(Failures::<E>::default().finish_with(E::Many).is_ok());
    }
}
