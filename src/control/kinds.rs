//! The watched kinds, declared once. Each entry of the [`kinds!`] table below names a kind's
//! Rust type and says how it is watched and kept; everything that has one part per kind is
//! derived from that one list:
//!
//! - [`Stores`]: a cluster's reflector stores, one `Vec<Store<K>>` per kind, with
//!   [`Stores::start`] (the watches), [`Stores::wait_ready`] (every first list), [`Stores::watches`]
//!   (how many there are, for the cluster's sync count) and [`Stores::objects`] (a copy);
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
//! **A kind whose CRD may be absent** (the Gateway API's): its watches would have to start only
//! once discovery finds the resource, and that decision belongs in [`Stores::start`]. An absent
//! kind gets no stores: its `Vec` stays empty, so `wait_ready`, `watches` and `objects` already
//! treat it as a kind with nothing in it, and the state file holds `[]` for it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize, Serializer};

use super::translate::Objects;
use super::watch::{self, Watches, touches_all, touches_service};

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
    ($(
        $(#[$doc:meta])*
        $field:ident: $K:ty {
            resource: $resource:literal,
            field_selectors: [$($selector:literal),* $(,)?],
            touch: $touch:expr,
            persist: $persist:expr $(,)?
        }
    ),* $(,)?) => {
        /// The reflector stores of one cluster, per kind: one per namespace (namespaced kinds)
        /// and field selector.
        pub struct Stores {
            $( $(#[$doc])* $field: Vec<Store<$K>>, )*
        }

        impl Stores {
            /// Starts every watch on the current tokio runtime.
            pub fn start(w: &Watches<'_>) -> Stores {
                Stores {
                    $( $field: watch::start::<$K>(w, $resource, &[$($selector),*], $touch), )*
                }
            }

            /// Resolves once every watch has completed its first full list.
            pub async fn wait_ready(&self) {
                $(
                    for s in &self.$field {
                        let _ = s.wait_until_ready().await;
                    }
                )*
            }

            /// How many watches there are.
            pub fn watches(&self) -> usize {
                0 $( + self.$field.len() )*
            }

            /// A copy of every store.
            pub fn objects(&self) -> ClusterObjects {
                ClusterObjects {
                    $( $field: self.$field.iter().flat_map(Store::state).collect(), )*
                }
            }
        }

        /// Owned copies of one cluster's objects (cheap: `Arc`s), for one translation: the live
        /// stores' or those loaded from the cluster's state file.
        #[derive(Clone, Default)]
        pub struct ClusterObjects {
            $( $(#[$doc])* pub $field: Vec<Arc<$K>>, )*
        }

        impl ClusterObjects {
            /// The borrowed view translation reads.
            pub fn view(&self) -> Objects<'_> {
                Objects {
                    $( $field: &self.$field, )*
                }
            }

            /// What the state file keeps of these objects.
            pub fn saved(&self) -> SavedObjects<'_> {
                SavedObjects {
                    $( $field: Persisted(&self.$field, $persist), )*
                }
            }
        }

        /// The objects part of a state file, as written: one array per kind, under its resource
        /// name.
        #[derive(Serialize)]
        pub struct SavedObjects<'a> {
            $( #[serde(rename = $resource)] $field: Persisted<'a, $K>, )*
        }

        /// The objects part of a state file, as read. A kind the file does not have is empty.
        #[derive(Deserialize)]
        pub struct LoadedObjects {
            $( #[serde(rename = $resource, default)] $field: Vec<$K>, )*
        }

        /// Each kind's resource name in the table, and its type's (they must agree).
        #[cfg(test)]
        fn resource_names() -> Vec<(&'static str, String)> {
            vec![ $( ($resource, <$K as kube::Resource>::plural(&()).into_owned()), )* ]
        }

        impl From<LoadedObjects> for ClusterObjects {
            fn from(file: LoadedObjects) -> ClusterObjects {
                ClusterObjects {
                    $( $field: file.$field.into_iter().map(Arc::new).collect(), )*
                }
            }
        }
    };
}

kinds! {
    /// The routes.
    ingresses: Ingress {
        resource: "ingresses",
        field_selectors: [],
        touch: touches_all,
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
        touch: touches_all,
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
    /// Node addresses and readiness, for NodePort upstreams.
    nodes: Node {
        resource: "nodes",
        field_selectors: [],
        touch: touches_all,
        persist: everything,
    },
    /// Secrets of type `kubernetes.io/tls` (certificates) and `Opaque` (htpasswd files for
    /// auth-secret, CA bundles for proxy-ssl-secret), by field selectors: no service-account
    /// tokens, no Helm releases. Only the certificates are persisted (without them a restart
    /// during an outage would serve TLS hosts with the default certificate; the state file is
    /// 0600 in a directory of kedge's); the Opaque ones are never written to disk, so they are
    /// absent while a cluster serves its persisted state.
    secrets: Secret {
        resource: "secrets",
        field_selectors: ["type=kubernetes.io/tls", "type=Opaque"],
        touch: touches_all,
        persist: is_certificate,
    },
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
