//! Objects decoded without what kedge never reads: `metadata.managedFields` (the API server's
//! record of who wrote which field, on every object it sends and often the object's largest
//! part) and kubectl's last-applied annotation (a second copy of the object) are skipped as
//! they are parsed, not built and then dropped.
//!
//! kube's watcher decodes each object with the type's own `Deserialize`, so the watches ask
//! for [`Lean<K>`]: the same resource, whose `Deserialize` runs `K`'s through a deserializer
//! (`Filtered`) that hides those keys from it. Everything else reaches `K`'s code unchanged,
//! so what it reads is exactly what it would read of the whole object, less those keys (a
//! unit test compares the two for every kind kedge watches). The watch unwraps each object
//! before its store sees it: the stores hold plain `K`.
//!
//! Skipped keys are still parsed (JSON has to be read to be skipped) but nothing of them is
//! allocated: each entry of managedFields was a map of maps of strings.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor};

/// kubectl's annotation on an object it applied (client-side): the whole object as applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `K` as a watch decodes it: without managedFields and the last-applied annotation.
#[derive(Clone, Debug)]
pub struct Lean<K>(pub K);

impl<K: Resource> Resource for Lean<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

impl<'de, K: de::Deserialize<'de>> de::Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::deserialize(Filtered { de: d, filter: &OBJECT }).map(Lean)
    }
}

/// What to hide of a map: keys skipped unread, and keys whose values are maps to filter too.
struct Filter {
    skip: &'static [&'static str],
    inner: &'static [(&'static str, &'static Filter)],
}

/// An object: only its metadata is filtered.
static OBJECT: Filter = Filter {
    skip: &[],
    inner: &[("metadata", &METADATA)],
};
static METADATA: Filter = Filter {
    skip: &["managedFields"],
    inner: &[("annotations", &ANNOTATIONS)],
};
static ANNOTATIONS: Filter = Filter {
    skip: &[LAST_APPLIED],
    inner: &[],
};

/// A deserializer that hands the maps it reads on without the keys `filter` skips. Values
/// that are not maps (and the values of keys it has no inner filter for) pass unchanged.
struct Filtered<D> {
    de: D,
    filter: &'static Filter,
}

/// Every `deserialize_*` of [`Filtered`]: the same call on the wrapped deserializer, with the
/// visitor wrapped.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method($($arg,)* FilteredVisitor { inner: visitor, filter: self.filter })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Filtered<D> {
    type Error = D::Error;

    forward! {
        deserialize_any(), deserialize_bool(), deserialize_i8(), deserialize_i16(),
        deserialize_i32(), deserialize_i64(), deserialize_i128(), deserialize_u8(),
        deserialize_u16(), deserialize_u32(), deserialize_u64(), deserialize_u128(),
        deserialize_f32(), deserialize_f64(), deserialize_char(), deserialize_str(),
        deserialize_string(), deserialize_bytes(), deserialize_byte_buf(), deserialize_option(),
        deserialize_unit(), deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str), deserialize_seq(),
        deserialize_tuple(len: usize), deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(), deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(), deserialize_ignored_any(),
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

struct FilteredVisitor<V> {
    inner: V,
    filter: &'static Filter,
}

/// Every `visit_*` of [`FilteredVisitor`] but those that see a map (directly, or inside an
/// `Option` or a newtype): the inner visitor's.
macro_rules! pass {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FilteredVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char), visit_str(&str),
        visit_borrowed_str(&'de str), visit_string(String), visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Filtered {
            de: d,
            filter: self.filter,
        })
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Filtered {
            de: d,
            filter: self.filter,
        })
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(seq)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(FilteredMap {
            map,
            filter: self.filter,
            next: None,
        })
    }
}

/// A map without the keys its filter skips; `next`: the inner filter for the value of the key
/// just handed out.
struct FilteredMap<A> {
    map: A,
    filter: &'static Filter,
    next: Option<&'static Filter>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilteredMap<A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.map.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            if self.filter.skip.contains(&&*key) {
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            self.next = self.filter.inner.iter().find(|(k, _)| *k == key).map(|(_, f)| *f);
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        match self.next.take() {
            Some(filter) => self.map.next_value_seed(FilteredSeed { seed, filter }),
            None => self.map.next_value_seed(seed),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct FilteredSeed<S> {
    seed: S,
    filter: &'static Filter,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FilteredSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Filtered {
            de: d,
            filter: self.filter,
        })
    }
}

/// A map key, borrowed from the input where it can be (no escapes): a key costs no allocation
/// to look at before it is handed on.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'de>(PhantomData<&'de ()>);
        impl<'de> Visitor<'de> for KeyVisitor<'de> {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests;
