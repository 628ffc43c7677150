//! What tetherctl reads from the Kubernetes API: the Nodes, Tether's pods, and the agents' HTTP
//! endpoints through the API server's node proxy (`/api/v1/nodes/<node>:<port>/proxy/<path>`),
//! so that it works from wherever a kubeconfig does (it needs `get` on `nodes/proxy`, which
//! cluster-admin has).

use std::path::Path;

use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::CtlError;

/// How long one agent may take to answer through the proxy: a node that does not answer must not
/// hold up the others' status.
const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Cluster {
    client: Client,
}

/// An agent endpoint's answer through the node proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Answered {
        code: u16,
        body: String,
    },
    /// The API server could not reach the node's port, or the proxy call failed.
    Unreachable(String),
}

impl Cluster {
    /// A client from `kubeconfig`, else from `KUBECONFIG`, `~/.kube/config` or the in-cluster
    /// service account.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Cluster, CtlError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| CtlError::Config(format!("kubeconfig {}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| CtlError::Config(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => Config::infer()
                .await
                .map_err(|e| CtlError::Config(format!("no Kubernetes configuration: {e}")))?,
        };
        // An agent that is not ready answers 503 through the proxy: that answer is the status,
        // not something to retry (kube retries 503 by default).
        let mut config = config;
        config.default_retry = false;
        let client =
            Client::try_from(config).map_err(|e| CtlError::Config(format!("client: {e}")))?;
        Ok(Cluster { client })
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, CtlError> {
        let api: Api<Node> = Api::all(self.client.clone());
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(|e| CtlError::Api(format!("listing nodes: {e}")))?
            .items)
    }

    /// Pods of `namespace` with the label `app.kubernetes.io/name=<name>`.
    pub async fn pods(&self, namespace: &str, name: &str) -> Result<Vec<Pod>, CtlError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("app.kubernetes.io/name={name}");
        Ok(api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| CtlError::Api(format!("listing pods {selector}: {e}")))?
            .items)
    }

    /// One pod; a missing one is [`CtlError::NoSuchPod`].
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Pod, CtlError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| CtlError::Api(format!("reading pod {namespace}/{name}: {e}")))?
            .ok_or_else(|| CtlError::NoSuchPod(format!("{namespace}/{name}")))
    }

    pub async fn all_pods(&self) -> Result<Vec<Pod>, CtlError> {
        list(Api::all(self.client.clone()), "pods").await
    }

    pub async fn namespaces(&self) -> Result<Vec<Namespace>, CtlError> {
        list(Api::all(self.client.clone()), "namespaces").await
    }

    pub async fn network_policies(&self) -> Result<Vec<NetworkPolicy>, CtlError> {
        list(Api::all(self.client.clone()), "networkpolicies").await
    }

    pub async fn services(&self, namespace: &str) -> Result<Vec<Service>, CtlError> {
        list(Api::namespaced(self.client.clone(), namespace), "services").await
    }

    pub async fn persistent_volumes(&self) -> Result<Vec<PersistentVolume>, CtlError> {
        list(Api::all(self.client.clone()), "persistentvolumes").await
    }

    pub async fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, CtlError> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| CtlError::Api(format!("reading claim {namespace}/{name}: {e}")))
    }

    pub async fn pods_in(&self, namespace: &str) -> Result<Vec<Pod>, CtlError> {
        list(Api::namespaced(self.client.clone(), namespace), "pods").await
    }

    /// VolumeSnapshotContents (external-snapshotter's CRD); none when the CRD is not installed.
    pub async fn snapshot_contents(&self) -> Result<Vec<DynamicObject>, CtlError> {
        let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent");
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
            Err(e) => Err(CtlError::Api(format!(
                "listing volumesnapshotcontents: {e}"
            ))),
        }
    }

    /// GET `path` on `port` of `node`, through the API server.
    pub async fn node_endpoint(&self, node: &str, port: u16, path: &str) -> Reply {
        self.proxy(&format!(
            "/api/v1/nodes/{node}:{port}/proxy/{}",
            path.trim_start_matches('/')
        ))
        .await
    }

    /// GET `path` of `node`'s kubelet, through the API server (kubelet's Summary API:
    /// `stats/summary`).
    pub async fn kubelet(&self, node: &str, path: &str) -> Reply {
        self.proxy(&format!(
            "/api/v1/nodes/{node}/proxy/{}",
            path.trim_start_matches('/')
        ))
        .await
    }

    async fn proxy(&self, uri: &str) -> Reply {
        let request = match http::Request::get(uri).body(kube::client::Body::empty()) {
            Ok(r) => r,
            Err(e) => return Reply::Unreachable(format!("{uri}: {e}")),
        };
        let call = async {
            let response = self.client.send(request).await?;
            let code = response.status().as_u16();
            let bytes = response.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((code, bytes))
        };
        match tokio::time::timeout(PROXY_TIMEOUT, call).await {
            Ok(Ok((code, bytes))) => Reply::Answered {
                code,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            },
            Ok(Err(e)) => Reply::Unreachable(format!("{uri}: {e}")),
            Err(_) => Reply::Unreachable(format!("{uri}: no answer within {PROXY_TIMEOUT:?}")),
        }
    }
}

async fn list<K>(api: Api<K>, what: &str) -> Result<Vec<K>, CtlError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| CtlError::Api(format!("listing {what}: {e}")))?
        .items)
}
