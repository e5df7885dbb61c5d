//! One watched cluster: a `kube` client built from its kubeconfig, and a reflector per kind the
//! translation reads (per namespace when the config limits namespaces). Every change wakes the
//! control loop; the stores are read whole when the next table is built, so a lost watch event
//! can never leave a stale route behind (the reflector's relist replaces the store).

use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::translate::{ClusterSpec, Objects, UpstreamMode};
use crate::config::{self, ClusterConfig};

/// The reflected state of one cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    pub spec: ClusterSpec,
    ingresses: Vec<Store<Ingress>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    classes: Store<IngressClass>,
    nodes: Store<Node>,
}

/// Owned copies of a cluster's objects (cheap: `Arc`s), for one translation.
pub struct Snapshot {
    ingresses: Vec<Arc<Ingress>>,
    classes: Vec<Arc<IngressClass>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
}

impl Snapshot {
    pub fn objects(&self) -> Objects<'_> {
        Objects {
            ingresses: &self.ingresses,
            classes: &self.classes,
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
        }
    }
}

impl Cluster {
    /// Builds the client and starts the watches (on the current tokio runtime). Fails only when
    /// the kubeconfig cannot be read or used; an unreachable API server is retried with backoff.
    pub async fn connect(cfg: &ClusterConfig, changed: Arc<Notify>) -> Result<Cluster, String> {
        let client = client(cfg).await?;
        let name = cfg.name.clone();
        // One watch per namespace when the config names them, else one over all namespaces.
        let namespaces: Vec<Option<&str>> = if cfg.namespaces.is_empty() {
            vec![None]
        } else {
            cfg.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut ingresses = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for ns in namespaces {
            ingresses.push(watch(scoped::<Ingress>(&client, ns), "ingresses", &name, &changed));
            services.push(watch(scoped::<Service>(&client, ns), "services", &name, &changed));
            slices.push(watch(
                scoped::<EndpointSlice>(&client, ns),
                "endpointslices",
                &name,
                &changed,
            ));
        }
        let classes = watch(
            Api::<IngressClass>::all(client.clone()),
            "ingressclasses",
            &name,
            &changed,
        );
        let nodes = watch(Api::<Node>::all(client), "nodes", &name, &changed);
        Ok(Cluster {
            spec: ClusterSpec {
                name: cfg.name.clone(),
                ingress_class: cfg.ingress_class.clone(),
                controller: cfg.controller.clone(),
                upstream: match cfg.upstream {
                    config::UpstreamMode::Pods => UpstreamMode::Pods,
                    config::UpstreamMode::Nodeports => UpstreamMode::NodePorts,
                },
                node_address_type: cfg.node_address_type.clone(),
            },
            config: cfg.clone(),
            ingresses,
            services,
            slices,
            classes,
            nodes,
        })
    }

    /// Resolves once every watch has completed its first full list.
    pub async fn wait_ready(&self) {
        for s in &self.ingresses {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.services {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.slices {
            let _ = s.wait_until_ready().await;
        }
        let _ = self.classes.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// Copies the current state of every store.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingresses: self.ingresses.iter().flat_map(Store::state).collect(),
            classes: self.classes.state(),
            services: self.services.iter().flat_map(Store::state).collect(),
            slices: self.slices.iter().flat_map(Store::state).collect(),
            nodes: self.nodes.state(),
        }
    }
}

/// A client from the cluster's kubeconfig (or `$KUBECONFIG` / `~/.kube/config`) and context.
async fn client(cfg: &ClusterConfig) -> Result<Client, String> {
    let what = |e: &dyn std::fmt::Display| format!("cluster {:?}: {e}", cfg.name);
    let kubeconfig = match &cfg.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path).map_err(|e| what(&e))?,
        None => kube::config::Kubeconfig::read().map_err(|e| what(&e))?,
    };
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| what(&e))?;
    Client::try_from(config).map_err(|e| what(&e))
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts a reflector for `api` on the current runtime and returns its store. Errors (API server
/// down, 410 Gone, auth) are retried with kube's default backoff; the last good store keeps
/// serving meanwhile. A failure and the recovery are each logged once.
fn watch<K>(api: Api<K>, what: &'static str, cluster: &str, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let cluster = cluster.to_owned();
    let changed = Arc::clone(changed);
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut healthy = true;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if !healthy {
                        tracing::info!(cluster, what, "watch recovered");
                        healthy = true;
                    }
                    // A relist arrives as Init, InitApply..., InitDone and replaces the store
                    // at InitDone: rebuild once then, not per object.
                    if !matches!(event, Event::Init | Event::InitApply(_)) {
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    if healthy {
                        tracing::warn!(cluster, what, error = %e, "watch failed; retrying, still serving the last known state");
                        healthy = false;
                    }
                }
            }
        }
    });
    reader
}
