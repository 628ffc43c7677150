//! The node agent's loop: three watches (Pods, Namespaces, NetworkPolicies; list and watch
//! only), one view of the cluster, and once no further change is waiting the table rewritten
//! by the difference: a lone change reaches the kernel at once, a burst (changes arriving while
//! the agent works) is written together. Nothing is written before all three lists are complete, so a restart never
//! writes a partial view (which could open a pod); the old table stays in force until then.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config, Resource, ResourceExt};

use crate::delta;
use crate::metrics::Metrics;
use crate::model::{Cluster, Plan, PodInfo, Policy};
use crate::nft::{self, Edit, Scope, Table};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("nftables: {0}")]
    Nftables(#[from] cni_core::firewall::FirewallError),
}

pub struct Settings {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub table: nft::Options,
    /// The node's pod bridge (see [`cni_core::same_node`]).
    pub bridge: String,
    /// Where /metrics, /healthz and /readyz are served, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

enum Change {
    Pod(Box<Event<Pod>>),
    Namespace(Event<Namespace>),
    Policy(Event<NetworkPolicy>),
}

/// What changed since the last write: nothing, one pod (with what the agent knew of it before
/// its first change), one policy, or more (the whole plan).
enum Pending {
    Nothing,
    Pod((String, String), Option<PodInfo>),
    Policy((String, String)),
    More,
}

impl Pending {
    /// Adds a change of the pod `key` (`None`: of something else, or of many).
    fn pod(self, key: Option<(String, String)>, cluster: &Cluster) -> Pending {
        match (self, key) {
            (Pending::Nothing, Some(key)) => {
                let before = cluster.pods.get(&key).cloned();
                Pending::Pod(key, before)
            }
            (Pending::Pod(known, before), Some(key)) if known == key => Pending::Pod(known, before),
            _ => Pending::More,
        }
    }

    /// Adds a change of the policy `key` (`None`: of many).
    fn policy(self, key: Option<(String, String)>) -> Pending {
        match (self, key) {
            (Pending::Nothing, Some(key)) => Pending::Policy(key),
            (Pending::Policy(known), Some(key)) if known == key => Pending::Policy(known),
            _ => Pending::More,
        }
    }
}

/// The list-and-watch state of one kind of object; its items live in the [`Cluster`], swapped in
/// whole at the end of a (re)list.
struct Kind<K, V> {
    relisting: Option<BTreeMap<K, V>>,
    synced: bool,
}

impl<K: Ord, V> Default for Kind<K, V> {
    fn default() -> Self {
        Kind {
            relisting: None,
            synced: false,
        }
    }
}

impl<K: Ord, V> Kind<K, V> {
    /// Applies one event (`None` values are objects the agent does not keep); true when the view
    /// may have changed.
    fn apply<O>(
        &mut self,
        items: &mut BTreeMap<K, V>,
        event: Event<O>,
        key: impl Fn(&O) -> K,
        value: impl Fn(&O) -> Option<V>,
    ) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                if let (Some(list), Some(v)) = (self.relisting.as_mut(), value(&o)) {
                    list.insert(key(&o), v);
                }
                false
            }
            Event::InitDone => {
                *items = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(o) => {
                match value(&o) {
                    Some(v) => items.insert(key(&o), v),
                    None => items.remove(&key(&o)),
                };
                true
            }
            Event::Delete(o) => items.remove(&key(&o)).is_some(),
        }
    }
}

fn namespaced<O: Resource>(o: &O) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

async fn client(settings: &Settings) -> Result<Client, AgentError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| AgentError::Client(e.to_string()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| AgentError::Client(e.to_string()))?
        }
        None => Config::infer()
            .await
            .map_err(|e| AgentError::Client(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| AgentError::Client(e.to_string()))
}

/// Runs until the watches end (they do not: errors are retried with backoff).
pub async fn run(settings: Settings) -> Result<(), AgentError> {
    let client = client(&settings).await?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = settings.metrics_addr {
        let listener = tether_observe::http::bind(addr)
            .await
            .map_err(|e| AgentError::Client(format!("binding {addr}: {e}")))?;
        tokio::spawn(tether_observe::http::serve(
            listener,
            Arc::new(metrics.endpoints(settings.bridge.clone())),
        ));
    }
    let config = watcher::Config::default();
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(|e| Change::Pod(Box::new(e))))
        .boxed();
    let namespaces = watcher::watcher(Api::<Namespace>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(Change::Namespace))
        .boxed();
    let policies = watcher::watcher(Api::<NetworkPolicy>::all(client), config)
        .default_backoff()
        .map(|e| e.map(Change::Policy))
        .boxed();
    let mut changes = stream::select_all([pods, namespaces, policies]);

    let mut pods: Kind<(String, String), PodInfo> = Kind::default();
    let mut namespaces: Kind<String, crate::selector::Labels> = Kind::default();
    let mut policies: Kind<(String, String), Policy> = Kind::default();
    let mut cluster = Cluster::default();
    let mut applied: Option<Table> = None;
    // The plan `applied` was rendered from; `None` after a pod's delta (worked out again while
    // nothing waits) or a failed write.
    let mut planned: Option<Plan> = None;
    let mut bypass: Option<String> = None;
    let mut pending = Pending::Nothing;
    let mut dirty = false;
    let mut since = Instant::now();
    loop {
        let next = if dirty {
            // A change already received joins this write; none waiting: write now.
            match changes.next().now_or_never() {
                Some(next) => next,
                None => {
                    let started = Instant::now();
                    let node = settings.node_name.as_str();
                    let mut whole = |table: Option<Table>| {
                        write(
                            &settings,
                            &metrics,
                            since,
                            &cluster,
                            table.as_ref(),
                            &mut bypass,
                        )
                        .map_or((None, None), |(table, plan)| (Some(table), Some(plan)))
                    };
                    (applied, planned) = match (&pending, applied.take(), planned.take()) {
                        (Pending::Pod(key, before), Some(table), _) => match delta::pod_change(
                            &cluster,
                            node,
                            &table,
                            before.as_ref(),
                            cluster.pods.get(key),
                        ) {
                            Some(edits) => {
                                (write_edits(&metrics, since, started, table, &edits), None)
                            }
                            None => whole(Some(table)),
                        },
                        (Pending::Policy(key), Some(mut table), Some(mut plan)) => {
                            match delta::policy_change(&cluster, node, &mut plan, &mut table, key) {
                                Some((scope, was)) => {
                                    let written =
                                        write_policy(&metrics, since, started, &was, table, &scope);
                                    let plan = written.is_some().then_some(plan);
                                    (written, plan)
                                }
                                None => whole(Some(table)),
                            }
                        }
                        (_, table, _) => whole(table),
                    };
                    metrics.policies.set(cluster.policies.len() as i64);
                    pending = Pending::Nothing;
                    dirty = applied.is_none();
                    if dirty {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            }
        } else if applied.is_some() && planned.is_none() {
            // The plan of the table, worked out while no change waits (a policy's change
            // starts from it).
            match changes.next().now_or_never() {
                Some(next) => next,
                None => {
                    planned = Some(cluster.plan(&settings.node_name));
                    continue;
                }
            }
        } else {
            changes.next().await
        };
        let changed = match next {
            None => return Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                false
            }
            Some(Ok(Change::Pod(e))) => {
                let key = match &*e {
                    Event::Apply(pod) | Event::Delete(pod) => Some(namespaced(pod)),
                    _ => None,
                };
                pending = pending.pod(key, &cluster);
                pods.apply(&mut cluster.pods, *e, namespaced, PodInfo::from_pod)
            }
            Some(Ok(Change::Namespace(e))) => {
                pending = Pending::More;
                namespaces.apply(
                    &mut cluster.namespaces,
                    e,
                    |n: &Namespace| n.name_any(),
                    |n: &Namespace| Some(n.labels().clone()),
                )
            }
            Some(Ok(Change::Policy(e))) => {
                let key = match &e {
                    Event::Apply(policy) | Event::Delete(policy) => Some(namespaced(policy)),
                    _ => None,
                };
                pending = pending.policy(key);
                policies.apply(&mut cluster.policies, e, namespaced, |p: &NetworkPolicy| {
                    Some(Policy::from(p.clone()))
                })
            }
        };
        let ready = changed && pods.synced && namespaces.synced && policies.synced;
        if ready && !dirty {
            since = Instant::now();
        }
        dirty |= ready;
    }
}

/// Writes a pod's moved set members ([`delta::pod_change`], worked out from `started`) into
/// `table`, the table in the kernel: that table with them, or `None` when the write failed
/// (the next write is whole).
fn write_edits(
    metrics: &Metrics,
    since: Instant,
    started: Instant,
    mut table: Table,
    edits: &[Edit],
) -> Option<Table> {
    let worked_out = started.elapsed();
    let write = nft::Write::edits(edits);
    let started = Instant::now();
    let written = if write.is_empty() {
        Ok(())
    } else {
        write.apply().map(drop)
    };
    match written {
        Ok(()) => {
            table.apply_edits(edits);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                elements = table.element_count(),
                commands = write.len(),
                path = "netlink (pod)",
                delta_ms = ms(worked_out),
                write_ms = ms(started.elapsed()),
                "policies applied"
            );
            succeeded(metrics, &table, since);
            Some(table)
        }
        Err(e) => failed(
            metrics,
            since,
            &e,
            "writing a pod's set members failed; rewriting the table",
        ),
    }
}

/// Writes a policy's change ([`delta::policy_change`], worked out from `started`): `after`, the
/// table after it, differs from the table in the kernel within `scope` only, where that table
/// was `before`. The table in the kernel after it, or `None` when the write failed (the next
/// write is whole).
fn write_policy(
    metrics: &Metrics,
    since: Instant,
    started: Instant,
    before: &Table,
    mut after: Table,
    scope: &Scope,
) -> Option<Table> {
    let write = nft::write_scoped(before, &after, scope);
    let worked_out = started.elapsed();
    let writing = Instant::now();
    match write.apply() {
        Ok(handles) => {
            after.handles = handles;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                rules = after.rule_count(),
                elements = after.element_count(),
                commands = write.len(),
                path = if write.path() == "nft" {
                    "nft (policy)"
                } else {
                    "netlink (policy)"
                },
                chains_patched = write.patched(),
                delta_ms = ms(worked_out),
                write_ms = ms(writing.elapsed()),
                "policies applied"
            );
            succeeded(metrics, &after, since);
            Some(after)
        }
        Err(e) => failed(
            metrics,
            since,
            &e,
            "writing a policy's change failed; rewriting the table",
        ),
    }
}

/// Writes the table for `cluster`; what is in the kernel now, or `None` when the write failed.
/// `since`: when the first change it carries reached the agent; `bypass`: why traffic between
/// pods of the node escapes the table, as last warned of.
fn write(
    settings: &Settings,
    metrics: &Metrics,
    since: Instant,
    cluster: &Cluster,
    applied: Option<&Table>,
    bypass: &mut Option<String>,
) -> Option<(Table, Plan)> {
    let started = Instant::now();
    let plan = cluster.plan(&settings.node_name);
    let planned = started.elapsed();
    let mut table = nft::render(&plan, &settings.table);
    let rendered = started.elapsed();
    let written = nft::write(applied, &table).and_then(|w| {
        let diffed = started.elapsed();
        w.apply()
            .map(|handles| (w.len(), w.path(), w.patched(), diffed, handles))
    });
    // What the kernel does not wait for comes after the write.
    let now = if plan.policies_exist {
        crate::metrics::same_node_policed(&settings.bridge).err()
    } else {
        None
    };
    if now != *bypass {
        // Warned once when it starts (or changes), not on every write.
        if let Some(why) = &now {
            tracing::warn!(%why, "policies are not enforced between pods of this node");
        }
        *bypass = now;
    }
    metrics.problems.set(plan.problems.len() as i64);
    for problem in &plan.problems {
        tracing::warn!(%problem, "part of a policy cannot be enforced");
    }
    match written {
        Ok((commands, path, patched, diffed, handles)) => {
            table.handles = handles;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::info!(
                rules = table.rule_count(),
                elements = table.element_count(),
                commands,
                path,
                chains_patched = patched,
                plan_ms = ms(planned),
                render_ms = ms(rendered - planned),
                diff_ms = ms(diffed - rendered),
                write_ms = ms(started.elapsed() - diffed),
                "policies applied"
            );
            succeeded(metrics, &table, since);
            Some((table, plan))
        }
        Err(e) => {
            failed(
                metrics,
                since,
                &e,
                "writing the policy table failed; retrying",
            );
            None
        }
    }
}

/// A write that succeeded: counted, and the table's size in the metrics.
fn succeeded(metrics: &Metrics, table: &Table, since: Instant) {
    metrics.rules.set(table.rule_count() as i64);
    metrics.sets.set(table.sets.len() as i64);
    metrics.elements.set(table.element_count() as i64);
    metrics.written(Ok(()), since.elapsed());
}

/// A write that failed: logged and counted; the next write is whole (`None`: no table known).
fn failed(
    metrics: &Metrics,
    since: Instant,
    error: &cni_core::firewall::FirewallError,
    what: &str,
) -> Option<Table> {
    let e = cni_core::error::chain(error);
    tracing::error!(error = %e, "{what}");
    metrics.written(Err(e), since.elapsed());
    None
}
