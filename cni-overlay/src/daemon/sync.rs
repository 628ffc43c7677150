//! Keeping the kernel in step with the peers. A full reconciliation (the kernel's tables read and
//! compared with everything wanted) runs at start, on the resync timer and whenever what is known
//! of the kernel is in doubt; a change in the cluster is applied on its own, from the changed
//! peers alone, so that its cost does not grow with the cluster.

use std::collections::BTreeMap;
use std::time::Instant;

use super::config::{Args, ClusterCidrs};
use super::datastore::Datastore;
use super::kernel::{self, EntryError, Kernel, Outcome};
use super::metrics::Metrics;
use super::state::Changed;
use super::state::{NodeSubnets, Peer, Scope};
use super::wanted::Wanted;

/// What the next reconciliation has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Read every peer and the kernel's tables, and compare.
    Full,
    /// Read every peer and write what differs from what was wanted before.
    All,
    /// Only these peers changed.
    Peers(Vec<(String, Option<Peer>)>),
}

impl Work {
    /// Both pieces of work at once: the larger one, or both lists of peers.
    pub fn and(self, other: Work) -> Work {
        match (self, other) {
            (Work::Full, _) | (_, Work::Full) => Work::Full,
            (Work::All, _) | (_, Work::All) => Work::All,
            (Work::Peers(mut a), Work::Peers(b)) => {
                a.extend(b);
                Work::Peers(a)
            }
        }
    }
}

impl From<Changed> for Work {
    fn from(changed: Changed) -> Work {
        match changed {
            Changed::All => Work::All,
            Changed::Peers(peers) => Work::Peers(peers),
        }
    }
}

/// What one reconciliation leaves to report.
pub struct Reconciled {
    /// Whether it ran to its end (the kernel was written).
    pub ran: bool,
    /// Peers refused (by the kernel or before it): node and why.
    pub refused: Vec<(String, String)>,
}

/// What is known between reconciliations.
#[derive(Default)]
pub struct Sync {
    wanted: Option<Wanted>,
    /// The VXLAN device the wanted entries were written to.
    vxlan_index: Option<u32>,
    /// Entries the kernel refused, per peer, until the peer changes or the next full run.
    failed: BTreeMap<String, Vec<String>>,
    /// Refusals no peer could be named for.
    unowned: Vec<String>,
}

pub struct Context<'a, S: Datastore> {
    pub args: &'a Args,
    pub store: &'a mut S,
    pub kernel: &'a mut Kernel,
    pub metrics: &'a Metrics,
    pub clusters: ClusterCidrs,
    pub subnets: NodeSubnets,
}

impl Sync {
    /// One reconciliation. A datastore failure keeps every working entry as it is; an entry the
    /// kernel refuses is reported (log, metrics, readiness, an Event) and every other entry is
    /// applied.
    pub async fn run<S: Datastore>(&mut self, work: Work, cx: Context<'_, S>) -> Reconciled {
        let skipped = Reconciled {
            ran: false,
            refused: Vec::new(),
        };
        let started = Instant::now();
        let vxlan = match cx.kernel.ensure_vxlan(&cx.subnets.all()) {
            Ok(vxlan) => vxlan,
            Err(e) => {
                let refused = vec![format!("VXLAN device: {}", cni_core::error::chain(&e))];
                cx.metrics.reconciled(started.elapsed(), 0, 0, refused);
                tracing::error!(error = %cni_core::error::chain(&e), "the VXLAN device cannot be set up");
                return skipped;
            }
        };
        let scope = Scope {
            me: cx.args.node_name.clone(),
            on_link: cx.kernel.underlay.on_link.clone(),
            direct_routing: cx.args.direct_routing,
            own: cx.subnets.all(),
            clusters: cx.clusters.all(),
        };
        // A change alone is applied only on top of what was written to this very device, for
        // this node as it is now (subnets, underlay).
        let known = self.vxlan_index == Some(vxlan.index)
            && self.wanted.as_ref().is_some_and(|w| *w.scope() == scope);
        let work = if known { work } else { Work::Full };
        let full = work == Work::Full;
        let changes = match (work, self.wanted.as_mut()) {
            (Work::Peers(peers), Some(wanted)) => {
                let mut changes = kernel::Changes::default();
                for (node, peer) in peers {
                    let (before, after) = wanted.replace(&node, peer.as_ref());
                    let outcome = cx.kernel.apply_difference(&vxlan, &before, &after);
                    self.failed.remove(&node);
                    note_failures(
                        &mut self.failed,
                        &mut self.unowned,
                        wanted,
                        outcome.failures,
                        Some(&node),
                    );
                    changes.added += outcome.changes.added;
                    changes.removed += outcome.changes.removed;
                }
                changes
            }
            (work, _) => {
                // The resync timer compares the kernel with what is wanted already; peers are
                // read again only when what is wanted is in doubt.
                let wanted = match self.wanted.take() {
                    Some(wanted) if work == Work::Full && known => wanted,
                    old => {
                        self.wanted = old;
                        match cx.store.peers().await {
                            Ok(peers) => Wanted::from_peers(scope, &peers),
                            Err(e) => {
                                cx.metrics.datastore_errors.inc();
                                tracing::warn!(error = %cni_core::error::chain(&e), "cannot read peers; keeping the kernel as it is");
                                return skipped;
                            }
                        }
                    }
                };
                let desired = wanted.desired();
                let outcome: Outcome = match (&work, self.wanted.as_ref()) {
                    (Work::All, Some(before)) if known => {
                        cx.kernel
                            .apply_difference(&vxlan, &before.desired(), &desired)
                    }
                    _ => {
                        cx.kernel
                            .reconcile(&vxlan, &desired, &cx.clusters.all(), &cx.subnets.all())
                    }
                };
                self.failed.clear();
                self.unowned.clear();
                note_failures(
                    &mut self.failed,
                    &mut self.unowned,
                    &wanted,
                    outcome.failures,
                    None,
                );
                self.wanted = Some(wanted);
                outcome.changes
            }
        };
        self.vxlan_index = Some(vxlan.index);
        self.report(cx.metrics, started, changes, full)
    }

    fn report(
        &self,
        metrics: &Metrics,
        started: Instant,
        changes: kernel::Changes,
        full: bool,
    ) -> Reconciled {
        let Some(wanted) = self.wanted.as_ref() else {
            return Reconciled {
                ran: false,
                refused: Vec::new(),
            };
        };
        let failed = self
            .failed
            .iter()
            .flat_map(|(node, whys)| whys.iter().map(|why| (node.clone(), why.clone())));
        let refused: Vec<(String, String)> = wanted.rejected().chain(failed).collect();
        let described: Vec<String> = refused
            .iter()
            .map(|(node, why)| format!("node {node}: {why}"))
            .chain(self.unowned.iter().cloned())
            .collect();
        let failures = self.failed.values().map(Vec::len).sum::<usize>() + self.unowned.len();
        let applied = wanted.entries().saturating_sub(failures);
        let changed = changes != kernel::Changes::default();
        if changed || full {
            for why in &described {
                tracing::error!(entry = %why, "an entry was refused; the others are applied");
            }
        }
        if changed {
            tracing::info!(added = changes.added, removed = changes.removed, entries = applied, peers = wanted.peers(), took = ?started.elapsed(), "reconciled");
        }
        let (direct, vxlan) = wanted.route_kinds();
        metrics.direct_routes.set(direct as i64);
        metrics.vxlan_routes.set(vxlan as i64);
        metrics.reconciled(started.elapsed(), applied, wanted.peers(), described);
        Reconciled { ran: true, refused }
    }
}

/// Files each refused entry under the peer it is for (`default`: the peer being changed).
fn note_failures(
    failed: &mut BTreeMap<String, Vec<String>>,
    unowned: &mut Vec<String>,
    wanted: &Wanted,
    failures: Vec<EntryError>,
    default: Option<&str>,
) {
    for failure in failures {
        let why = cni_core::error::chain(&failure);
        match wanted.owner_of(&failure.entry).or(default) {
            Some(node) => failed.entry(node.to_string()).or_default().push(why),
            None => unowned.push(why),
        }
    }
}
