//! The watched kinds, declared once. Each entry of the [`kinds!`] table below names a kind's
//! Rust type and says how it is watched and kept; everything that has one part per kind is
//! derived from that one list:
//!
//! - [`Stores`]: a cluster's reflector stores, one `Vec<Store<K>>` per kind, with
//!   [`Stores::start`] (the watches), [`Stores::wait_ready`] (every first list), [`Stores::watches`]
//!   (how many there are, for the cluster's sync count) and [`Stores::objects`] (a copy; an
//!   update's [`Stores::objects_except`] leaves the EndpointSlices out);
//! - [`ClusterObjects`]: the owned object set of one cluster (live, or loaded from its state
//!   file), with [`ClusterObjects::view`], the borrowed [`Objects`] that translation reads;
//! - [`SavedObjects`] and [`LoadedObjects`]: the objects part of the state file, one JSON array
//!   per kind under its resource name. A kind missing from a file loads as empty, so a file
//!   written before a kind was added still loads.
//!
//! Where a kind is watched comes from its type's scope ([`watch::Scope`]): a namespaced kind
//! once per configured namespace (or once over all), a cluster-scoped kind once.
//!
//! **Adding a kind**: add its entry to the table (the field name is the one translation reads),
//! add the same field to [`Objects`] in `translate.rs` (the compiler insists; test and bench
//! literals end in `..Objects::default()`, so they need no change), and read it in translation. The cluster's RBAC
//! (`config/rbac.yaml`) must allow `list` and `watch` on the resource.
//!
//! **Discovered kinds** (the Gateway API's, whose CRDs may not be installed) are the table's
//! `discovered` section. [`Stores::start`] starts their watches only once discovery
//! (`GET /apis/{group}/{version}`) lists their resource: at once if the CRD is installed, else
//! on a later check (every `watch_retry_max`), said once in the log. An absent kind is not an
//! error: it has no stores, so `wait_ready`, `watches` and `objects` treat it as a kind with
//! nothing in it, the state file holds `[]` for it and the cluster's health never hears of it.
//! A discovered kind's stores join only once they have listed, and never count in the first
//! sync: a kind that appears later cannot make a synced cluster unsynced.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use super::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};
use super::health::Health;
use super::translate::Objects;
use super::watch::{
    self, Changes, Touch, Watches, touches_all, touches_ingress, touches_namespace, touches_node, touches_route,
    touches_secret, touches_service, touches_service_object, touches_spec,
};

/// Declares the kinds. Each entry:
///
/// ```text
/// /// What translation reads it for (becomes the fields' doc).
/// field: Type {
///     resource: "plural",        // the API resource; the watch's name in logs; the state file's key
///     field_selectors: ["a=b"],  // one watch per field selector; [] for one watch of everything
///     touch: touches_all,        // how an event bears on the table (see `watch::Touch`)
///     persist: everything,       // which objects the state file keeps: fn(&Type) -> bool
/// },
/// ```
macro_rules! kinds {
    (
        always { $(
            $(#[$doc:meta])*
            $field:ident: $K:ty {
                resource: $resource:literal,
                field_selectors: [$($selector:literal),* $(,)?],
                touch: $touch:expr,
                persist: $persist:expr $(,)?
            }
        ),* $(,)? }
        discovered($api:literal) { $(
            $(#[$odoc:meta])*
            $ofield:ident: $OK:ty {
                resource: $oresource:literal,
                field_selectors: [$($oselector:literal),* $(,)?],
                touch: $otouch:expr,
                persist: $opersist:expr $(,)?
            }
        ),* $(,)? }
    ) => {
        /// The reflector stores of one cluster, per kind: one per namespace (namespaced kinds)
        /// and field selector. A discovered kind's stores are set once they have listed. A
        /// clone reads the same stores (the state file writer's copy).
        #[derive(Clone)]
        pub struct Stores {
            $( $(#[$doc])* $field: Vec<Store<$K>>, )*
            $( $(#[$odoc])* $ofield: Arc<OnceLock<Vec<Store<$OK>>>>, )*
        }

        /// The stores of the discovered kinds, for the task that discovers them.
        struct Discovered {
            $( $ofield: Arc<OnceLock<Vec<Store<$OK>>>>, )*
        }

        impl Stores {
            /// Starts every watch of the kinds always served on the current tokio runtime, and
            /// the task that starts those of the discovered kinds once the API server serves
            /// them ([`discover`]).
            pub fn start(w: &Watches<'_>) -> Stores {
                let stores = Stores {
                    $( $field: watch::start::<$K>(w, $resource, &[$($selector),*], $touch), )*
                    $( $ofield: Arc::default(), )*
                };
                let found = Discovered {
                    $( $ofield: Arc::clone(&stores.$ofield), )*
                };
                tokio::spawn(discover(Later::of(w), found));
                stores
            }

            /// Resolves once every watch of the kinds always served has completed its first
            /// full list (a discovered kind joins later, already listed).
            pub async fn wait_ready(&self) {
                $(
                    for s in &self.$field {
                        let _ = s.wait_until_ready().await;
                    }
                )*
            }

            /// How many watches the first sync counts: those of the kinds always served.
            pub fn watches(&self) -> usize {
                0 $( + self.$field.len() )*
            }

            /// A copy of every store (a discovered kind not yet listed has nothing).
            pub fn objects(&self) -> ClusterObjects {
                self.objects_except("")
            }

            /// A copy of every store but those of the kind `resource` (left empty): an update
            /// looks the few objects of that kind it needs up one by one.
            pub fn objects_except(&self, resource: &str) -> ClusterObjects {
                ClusterObjects {
                    $( $field: if $resource == resource {
                        Vec::new()
                    } else {
                        self.$field.iter().flat_map(Store::state).collect()
                    }, )*
                    $( $ofield: if $oresource == resource {
                        Vec::new()
                    } else {
                        self.$ofield.get().into_iter().flatten().flat_map(Store::state).collect()
                    }, )*
                }
            }
        }

        /// Checks discovery until every discovered kind is served, starting each one's watches
        /// as soon as it is: at once when its CRD is installed, else every `watch_retry_max`
        /// (how soon a failing watch would notice the API server again). Saying once which are
        /// missing, and once when they are all there after all.
        async fn discover(later: Later, found: Discovered) {
            let mut started: Vec<&'static str> = Vec::new();
            let mut said_missing = false;
            loop {
                let mut round = Discovery::new(&later.client);
                let mut missing: Vec<&'static str> = Vec::new();
                let mut unknown = false;
                $(
                    if !started.contains(&$oresource) {
                        let api_version = <$OK as kube::Resource>::api_version(&());
                        match round.served(&api_version, $oresource).await {
                            Some(true) => {
                                started.push($oresource);
                                start_discovered::<$OK>(
                                    &later,
                                    Arc::clone(&found.$ofield),
                                    $oresource,
                                    &[$($oselector),*],
                                    $otouch,
                                );
                            }
                            Some(false) => missing.push($oresource),
                            None => unknown = true,
                        }
                    }
                )*
                let cluster = later.cluster.as_str();
                if missing.is_empty() && !unknown {
                    if said_missing {
                        tracing::info!(cluster, "the {} is served now; watching it", $api);
                    }
                    return;
                }
                if !missing.is_empty() && !said_missing {
                    said_missing = true;
                    tracing::info!(
                        cluster,
                        missing = ?missing,
                        "the {} is absent (CRDs not installed); syncing without it, checking again every {:?}",
                        $api,
                        later.retry_max
                    );
                }
                tokio::time::sleep(later.retry_max).await;
            }
        }

        /// Owned copies of one cluster's objects (cheap: `Arc`s), for one translation: the live
        /// stores' or those loaded from the cluster's state file.
        #[derive(Clone, Default)]
        pub struct ClusterObjects {
            $( $(#[$doc])* pub $field: Vec<Arc<$K>>, )*
            $( $(#[$odoc])* pub $ofield: Vec<Arc<$OK>>, )*
        }

        impl ClusterObjects {
            /// The borrowed view translation reads.
            pub fn view(&self) -> Objects<'_> {
                Objects {
                    $( $field: &self.$field, )*
                    $( $ofield: &self.$ofield, )*
                }
            }

            /// What the state file keeps of these objects.
            pub fn saved(&self) -> SavedObjects<'_> {
                SavedObjects {
                    $( $field: Persisted(&self.$field, $persist), )*
                    $( $ofield: Persisted(&self.$ofield, $opersist), )*
                }
            }
        }

        /// The objects part of a state file, as written: one array per kind, under its resource
        /// name.
        #[derive(Serialize)]
        pub struct SavedObjects<'a> {
            $( #[serde(rename = $resource)] $field: Persisted<'a, $K>, )*
            $( #[serde(rename = $oresource)] $ofield: Persisted<'a, $OK>, )*
        }

        /// The objects part of a state file, as read. A kind the file does not have is empty.
        #[derive(Deserialize)]
        pub struct LoadedObjects {
            $( #[serde(rename = $resource, default)] $field: Vec<$K>, )*
            $( #[serde(rename = $oresource, default)] $ofield: Vec<$OK>, )*
        }

        /// Each kind's resource name in the table, and its type's (they must agree).
        #[cfg(test)]
        fn resource_names() -> Vec<(&'static str, String)> {
            vec![
                $( ($resource, <$K as kube::Resource>::plural(&()).into_owned()), )*
                $( ($oresource, <$OK as kube::Resource>::plural(&()).into_owned()), )*
            ]
        }

        impl From<LoadedObjects> for ClusterObjects {
            fn from(file: LoadedObjects) -> ClusterObjects {
                ClusterObjects {
                    $( $field: file.$field.into_iter().map(Arc::new).collect(), )*
                    $( $ofield: file.$ofield.into_iter().map(Arc::new).collect(), )*
                }
            }
        }
    };
}

kinds! {
    always {
        /// The routes.
        ingresses: Ingress {
            resource: "ingresses",
            field_selectors: [],
            touch: touches_ingress,
            persist: everything,
        },
        /// Which Ingresses are kedge's (`spec.controller`), and the default class.
        classes: IngressClass {
            resource: "ingressclasses",
            field_selectors: [],
            touch: touches_all,
            persist: everything,
        },
        /// Service ports by name, NodePorts, the upstream-mode annotation.
        services: Service {
            resource: "services",
            field_selectors: [],
            touch: touches_service_object,
            persist: everything,
        },
        /// The pods behind each Service. A change touches only its Service's endpoints, which the
        /// control loop updates without a full rebuild.
        slices: EndpointSlice {
            resource: "endpointslices",
            field_selectors: [],
            touch: touches_service,
            persist: everything,
        },
        /// Node addresses and readiness, for NodePort upstreams. A change touches the endpoints
        /// of the Services in NodePort mode, if it changes which nodes take their traffic.
        nodes: Node {
            resource: "nodes",
            field_selectors: [],
            touch: touches_node,
            persist: everything,
        },
        /// Secrets of type `kubernetes.io/tls` (certificates) and `Opaque` (htpasswd files for
        /// auth-secret, CA bundles for proxy-ssl-secret), by field selectors: no service-account
        /// tokens, no Helm releases. Only the certificates are persisted (without them a restart
        /// during an outage would serve TLS hosts with the default certificate; the state file is
        /// 0600 in a directory of kedge's); the Opaque ones are never written to disk, so they are
        /// absent while a cluster serves its persisted state. A change builds only what reads
        /// the Secret, if anything (see `Cluster::take_changes`).
        secrets: Secret {
            resource: "secrets",
            field_selectors: ["type=kubernetes.io/tls", "type=Opaque"],
            touch: touches_secret,
            persist: is_certificate,
        },
        /// Namespace labels, for Gateway listeners' `allowedRoutes` namespace selectors. Watched
        /// once, over the whole cluster, whatever `namespaces` the cluster names. A change
        /// builds nothing unless such a selector exists.
        namespaces: Namespace {
            resource: "namespaces",
            field_selectors: [],
            touch: touches_namespace,
            persist: everything,
        },
    }
    discovered("Gateway API") {
        /// GatewayClasses: which Gateways are kedge's (`spec.controllerName`).
        gateway_classes: GatewayClass {
            resource: "gatewayclasses",
            field_selectors: [],
            touch: touches_spec,
            persist: everything,
        },
        /// Gateways: listeners and addresses that routes attach to.
        gateways: Gateway {
            resource: "gateways",
            field_selectors: [],
            touch: touches_spec,
            persist: everything,
        },
        /// HTTPRoutes.
        http_routes: HttpRoute {
            resource: "httproutes",
            field_selectors: [],
            touch: touches_route,
            persist: everything,
        },
        /// GRPCRoutes.
        grpc_routes: GrpcRoute {
            resource: "grpcroutes",
            field_selectors: [],
            touch: touches_route,
            persist: everything,
        },
        /// ReferenceGrants: which cross-namespace references (backends, certificates) are allowed.
        reference_grants: ReferenceGrant {
            resource: "referencegrants",
            field_selectors: [],
            touch: touches_spec,
            persist: everything,
        },
    }
}

/// Single objects, for the endpoint fast path and updates (which read a few objects, not every
/// store).
impl Stores {
    /// The Service `ns/name`, as its store holds it now.
    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        let key = ObjectRef::new(name).within(ns);
        self.services.iter().find_map(|s| s.get(&key))
    }

    /// The EndpointSlice `ns/name`, as its store holds it now.
    pub fn slice(&self, ns: &str, name: &str) -> Option<Arc<EndpointSlice>> {
        let key = ObjectRef::new(name).within(ns);
        self.slices.iter().find_map(|s| s.get(&key))
    }

    /// Every Service (to find those in NodePort mode after a Node change).
    pub fn all_services(&self) -> Vec<Arc<Service>> {
        self.services.iter().flat_map(Store::state).collect()
    }

    /// Every Node (for NodePort endpoints).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.iter().flat_map(Store::state).collect()
    }

    /// Every Ingress (to find those that read a changed Secret).
    pub fn all_ingresses(&self) -> Vec<Arc<Ingress>> {
        self.ingresses.iter().flat_map(Store::state).collect()
    }

    /// Every Gateway (none while the kind is not served), to find the listeners that read a
    /// changed Secret or Namespace.
    pub fn all_gateways(&self) -> Vec<Arc<Gateway>> {
        self.gateways
            .get()
            .into_iter()
            .flatten()
            .flat_map(Store::state)
            .collect()
    }
}

/// What the discovery task keeps of a cluster's [`Watches`], to start watches later.
struct Later {
    cluster: String,
    client: Client,
    namespaces: Vec<Option<String>>,
    health: Arc<Health>,
    changes: Arc<Mutex<Changes>>,
    retry_max: Duration,
}

impl Later {
    fn of(w: &Watches<'_>) -> Later {
        Later {
            cluster: w.cluster.to_owned(),
            client: w.client.clone(),
            namespaces: w.namespaces.iter().map(|n| n.map(str::to_owned)).collect(),
            health: Arc::clone(w.health),
            changes: Arc::clone(w.changes),
            retry_max: w.retry_max,
        }
    }
}

/// Starts the watches of a discovered kind. Their stores go into `slot` once every one has
/// listed, and only then count: a kind whose CRD appears later never makes a synced cluster
/// unsynced (which would send it back to its persisted state), and the first sync never waits
/// for a kind that may never come. Their first lists count on a counter of their own for the
/// same reason. Once set, the control loop is woken for a full build and the state file.
fn start_discovered<K>(
    later: &Later,
    slot: Arc<OnceLock<Vec<Store<K>>>>,
    what: &'static str,
    fields: &[&str],
    touch: fn(&Event<K>) -> Touch,
) where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::Scope: watch::Scope,
{
    let namespaces: Vec<Option<&str>> = later.namespaces.iter().map(Option::as_deref).collect();
    let listed = Arc::new(AtomicUsize::new(0));
    let stores = watch::start::<K>(
        &Watches {
            cluster: &later.cluster,
            client: &later.client,
            namespaces: &namespaces,
            health: &later.health,
            listed: &listed,
            changes: &later.changes,
            retry_max: later.retry_max,
        },
        what,
        fields,
        touch,
    );
    let health = Arc::clone(&later.health);
    let changes = Arc::clone(&later.changes);
    let cluster = later.cluster.clone();
    tokio::spawn(async move {
        for s in &stores {
            let _ = s.wait_until_ready().await;
        }
        let _ = slot.set(stores);
        tracing::info!(cluster, what, "watching");
        changes.lock().unwrap_or_else(|e| e.into_inner()).full = true;
        health.stores_added();
    });
}

/// One round of discovery: each group version asked once (`GET /apis/{group}/{version}`).
struct Discovery<'c> {
    client: &'c Client,
    /// Per group version: its resources, empty when it is not served (404).
    seen: HashMap<String, Option<Vec<String>>>,
}

impl<'c> Discovery<'c> {
    fn new(client: &'c Client) -> Discovery<'c> {
        Discovery {
            client,
            seen: HashMap::new(),
        }
    }

    /// Whether the API server serves `resource` in `api_version`; `None` when it could not
    /// say (unreachable, refused): ask again in the next round.
    async fn served(&mut self, api_version: &str, resource: &str) -> Option<bool> {
        if !self.seen.contains_key(api_version) {
            let answer = match self.client.list_api_group_resources(api_version).await {
                Ok(list) => Some(list.resources.into_iter().map(|r| r.name).collect()),
                Err(kube::Error::Api(status)) if status.is_not_found() => Some(Vec::new()),
                Err(e) => {
                    tracing::debug!(api_version, error = %e, "discovery failed");
                    None
                }
            };
            self.seen.insert(api_version.to_owned(), answer);
        }
        let resources = self.seen.get(api_version)?.as_ref()?;
        Some(resources.iter().any(|r| r == resource))
    }
}

/// Persists every object of a kind.
fn everything<K>(_: &K) -> bool {
    true
}

/// Persists only certificates (`kubernetes.io/tls` Secrets).
fn is_certificate(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some("kubernetes.io/tls")
}

/// Serializes the objects of `[Arc<K>]` that the filter keeps, as a sequence of `K`s (serde's
/// `Arc` support needs its `rc` feature).
pub struct Persisted<'a, K>(&'a [Arc<K>], fn(&K) -> bool);

impl<K: Serialize> Serialize for Persisted<'_, K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let keep = self.1;
        s.collect_seq(self.0.iter().map(|a| &**a).filter(|o| keep(o)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The table's resource names are the API's (so that logs and the state file say what the
    /// watch requests ask for), and each names one kind (each is one key of the state file).
    #[test]
    fn resource_names_are_the_types_and_unique() {
        let names = super::resource_names();
        for (table, api) in &names {
            assert_eq!(table, api);
        }
        let unique: BTreeSet<&str> = names.iter().map(|(n, _)| *n).collect();
        assert_eq!(unique.len(), names.len());
    }
}
