//! A [`ProxyConfig`] as the stream's named, versioned resources, and back again. Pure
//! functions shared by the control plane (split, then send what changed) and the proxy
//! (assemble what it holds into one configuration).
//!
//! | type URL | resources | name |
//! |---|---|---|
//! | [`SETTINGS_TYPE`] | exactly one | `settings` |
//! | [`DESTINATION_TYPE`] | one per destination | the destination's `name` |
//! | [`EGRESS_TYPE`] | exactly one | `egress` |
//!
//! A resource's version is a hash of its encoded bytes (FNV-1a, 128 bits, hex): equal content,
//! equal version, on any control-plane replica and across restarts, so a proxy that reconnects
//! with the versions it holds is sent only what really differs. The encoding is deterministic
//! because the build generates ordered maps.
//!
//! Destinations are assembled in name order: their order in a [`ProxyConfig`] carries no
//! meaning (lookups are by address and host), and keeping it would tie every destination's
//! version to its neighbours.

use std::collections::BTreeMap;

use prost::Message;

use super::config as pb;
use super::convert::{self, ConvertError};
use super::discovery::{Any, Resource};
use crate::proxy_config::ProxyConfig;

pub const SETTINGS_TYPE: &str = "type.googleapis.com/skein.config.v1alpha1.ProxySettings";
pub const DESTINATION_TYPE: &str = "type.googleapis.com/skein.config.v1alpha1.Destination";
pub const EGRESS_TYPE: &str = "type.googleapis.com/skein.config.v1alpha1.EgressPolicy";
/// Every resource type, in the order a push sends them. The settings come last: they carry
/// the configuration's version, so a proxy, which applies after each response, shows a
/// version only once the rest of that push has arrived.
pub const TYPE_URLS: [&str; 3] = [DESTINATION_TYPE, EGRESS_TYPE, SETTINGS_TYPE];

/// The name of the one [`SETTINGS_TYPE`] resource.
pub const SETTINGS_NAME: &str = "settings";
/// The name of the one [`EGRESS_TYPE`] resource.
pub const EGRESS_NAME: &str = "egress";

/// The resources of one type, by name.
pub type ResourceSet = BTreeMap<String, Resource>;
/// Every resource, by type URL (one of [`TYPE_URLS`]).
pub type Resources = BTreeMap<&'static str, ResourceSet>;

/// Why a configuration cannot be split into resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("destination {0:?} appears twice")]
    DuplicateDestination(String),
}

/// Why the resources a proxy holds do not make a configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssembleError {
    #[error("no {SETTINGS_NAME:?} resource")]
    MissingSettings,
    #[error("resource {name:?} is a {found:?}, not a {expected:?}")]
    WrongType {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("resource {name:?} holds destination {inner:?}")]
    NameMismatch { name: String, inner: String },
    #[error("resource {name:?}: {source}")]
    Decode {
        name: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// The type URL constant equal to `type_url`, if it is one of Skein's.
pub fn known_type(type_url: &str) -> Option<&'static str> {
    TYPE_URLS.into_iter().find(|known| *known == type_url)
}

/// `Destination` for `type.googleapis.com/skein.config.v1alpha1.Destination`: metric labels.
pub fn short_type_name(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// `config` as resources: every type is present, possibly with no resource.
pub fn split(config: &ProxyConfig) -> Result<Resources, SplitError> {
    let mut destinations = ResourceSet::new();
    for destination in &config.destinations {
        let resource = resource(
            DESTINATION_TYPE,
            &destination.name,
            &convert::destination_to_proto(destination),
        );
        if destinations
            .insert(destination.name.clone(), resource)
            .is_some()
        {
            return Err(SplitError::DuplicateDestination(destination.name.clone()));
        }
    }
    let settings = resource(
        SETTINGS_TYPE,
        SETTINGS_NAME,
        &convert::settings_to_proto(config),
    );
    let egress = resource(
        EGRESS_TYPE,
        EGRESS_NAME,
        &convert::egress_to_proto(&config.egress),
    );
    Ok(Resources::from([
        (SETTINGS_TYPE, single(settings)),
        (DESTINATION_TYPE, destinations),
        (EGRESS_TYPE, single(egress)),
    ]))
}

fn single(resource: Resource) -> ResourceSet {
    ResourceSet::from([(resource.name.clone(), resource)])
}

/// One resource: `message` encoded, named and versioned.
pub fn resource(type_url: &str, name: &str, message: &impl Message) -> Resource {
    let value = message.encode_to_vec();
    Resource {
        name: name.to_owned(),
        version: version_of(&value),
        resource: Some(Any {
            type_url: type_url.to_owned(),
            value,
        }),
    }
}

/// FNV-1a, 128 bits, as 32 hex digits: stable across builds and platforms (unlike std's
/// hasher), and wide enough that two contents never share a version in practice.
pub fn version_of(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u128::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:032x}")
}

/// The version a whole configuration is shown with: its own `version` if it has one, else a
/// digest of every resource's version.
pub fn config_version(config: &ProxyConfig, resources: &Resources) -> String {
    if !config.version.is_empty() {
        return config.version.clone();
    }
    let mut digest = Vec::new();
    for (type_url, set) in resources {
        for resource in set.values() {
            for part in [*type_url, &resource.name, &resource.version] {
                digest.extend_from_slice(part.as_bytes());
                digest.push(0);
            }
        }
    }
    version_of(&digest)
}

/// Name → version of a set: what a proxy reports holding when it reconnects.
pub fn versions(set: &ResourceSet) -> BTreeMap<String, String> {
    set.iter()
        .map(|(name, resource)| (name.clone(), resource.version.clone()))
        .collect()
}

/// What must be sent to turn a proxy holding `held` (name → version) into one holding
/// `current`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// New resources and those whose version changed, in name order.
    pub changed: Vec<Resource>,
    /// Names held that no longer exist, in name order.
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(held: &BTreeMap<String, String>, current: &ResourceSet) -> Delta {
    Delta {
        changed: current
            .values()
            .filter(|resource| held.get(&resource.name) != Some(&resource.version))
            .cloned()
            .collect(),
        removed: held
            .keys()
            .filter(|name| !current.contains_key(*name))
            .cloned()
            .collect(),
    }
}

/// The configuration `resources` describe. Needs the settings resource; missing egress means
/// none.
pub fn assemble(resources: &Resources) -> Result<ProxyConfig, AssembleError> {
    let empty = ResourceSet::new();
    let of_type = |type_url| resources.get(type_url).unwrap_or(&empty);
    let settings = of_type(SETTINGS_TYPE)
        .get(SETTINGS_NAME)
        .ok_or(AssembleError::MissingSettings)?;
    let mut config = convert::settings_from_proto(decode(SETTINGS_TYPE, settings)?)?;
    if let Some(egress) = of_type(EGRESS_TYPE).get(EGRESS_NAME) {
        config.egress = convert::egress_from_proto(decode(EGRESS_TYPE, egress)?)?;
    }
    for (name, resource) in of_type(DESTINATION_TYPE) {
        let destination: pb::Destination = decode(DESTINATION_TYPE, resource)?;
        if &destination.name != name {
            return Err(AssembleError::NameMismatch {
                name: name.clone(),
                inner: destination.name,
            });
        }
        config
            .destinations
            .push(convert::destination_from_proto(destination)?);
    }
    Ok(config)
}

fn decode<M: Message + Default>(
    expected: &'static str,
    resource: &Resource,
) -> Result<M, AssembleError> {
    let any = resource.resource.as_ref();
    let found = any.map(|any| any.type_url.as_str()).unwrap_or_default();
    if found != expected {
        return Err(AssembleError::WrongType {
            name: resource.name.clone(),
            expected,
            found: found.to_owned(),
        });
    }
    let value = any.map(|any| any.value.as_slice()).unwrap_or_default();
    M::decode(value).map_err(|source| AssembleError::Decode {
        name: resource.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::convert::tests::rich_config;

    fn sorted(mut config: ProxyConfig) -> ProxyConfig {
        config.destinations.sort_by(|a, b| a.name.cmp(&b.name));
        config
    }

    #[test]
    fn split_then_assemble_gives_the_config_back() {
        let mut config = rich_config();
        config.destinations.reverse();
        let resources = split(&config).expect("split");
        assert_eq!(resources.len(), TYPE_URLS.len());
        assert_eq!(
            resources[DESTINATION_TYPE].keys().collect::<Vec<_>>(),
            [
                "backend.demo.svc.cluster.local",
                "plain.demo.svc.cluster.local"
            ]
        );
        assert!(resources[SETTINGS_TYPE].contains_key("settings"));
        assert!(resources[EGRESS_TYPE].contains_key("egress"));
        // Destinations come back in name order.
        assert_eq!(assemble(&resources).expect("assemble"), sorted(config));

        let empty = ProxyConfig::default();
        let resources = split(&empty).expect("split");
        assert!(resources[DESTINATION_TYPE].is_empty());
        assert_eq!(assemble(&resources).expect("assemble"), empty);
    }

    #[test]
    fn versions_are_stable_and_follow_content() {
        let config = rich_config();
        let first = split(&config).expect("split");
        let again = split(&config.clone()).expect("split");
        assert_eq!(first, again);
        // Fixed for this content: a version must not change between builds or replicas.
        assert_eq!(version_of(b""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(version_of(b"a"), "d228cb696f1a8caf78912b704e4a8964");

        let mut changed = config.clone();
        changed.destinations[0].ports[0].endpoints[0].address = "198.18.0.99:8080".parse().unwrap();
        let second = split(&changed).expect("split");
        let delta = diff(
            &versions(&first[DESTINATION_TYPE]),
            &second[DESTINATION_TYPE],
        );
        assert_eq!(
            delta
                .changed
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["backend.demo.svc.cluster.local"],
            "only the destination whose endpoint changed"
        );
        assert!(delta.removed.is_empty());
        for other in [SETTINGS_TYPE, EGRESS_TYPE] {
            assert!(diff(&versions(&first[other]), &second[other]).is_empty());
        }
        assert_eq!(
            first[DESTINATION_TYPE]["plain.demo.svc.cluster.local"].version,
            second[DESTINATION_TYPE]["plain.demo.svc.cluster.local"].version
        );
    }

    #[test]
    fn diff_sends_new_and_changed_and_removes_the_gone() {
        let config = rich_config();
        let current = &split(&config).expect("split")[DESTINATION_TYPE];
        let backend = &current["backend.demo.svc.cluster.local"];
        let held = BTreeMap::from([
            (backend.name.clone(), backend.version.clone()),
            ("old.demo.svc.cluster.local".to_owned(), "v0".to_owned()),
        ]);
        let delta = diff(&held, current);
        assert_eq!(
            delta
                .changed
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["plain.demo.svc.cluster.local"]
        );
        assert_eq!(delta.removed, ["old.demo.svc.cluster.local"]);
        assert!(diff(&versions(current), current).is_empty());
        assert_eq!(diff(&BTreeMap::new(), current).changed.len(), 2);
    }

    #[test]
    fn duplicate_destinations_cannot_be_split() {
        let mut config = rich_config();
        config.destinations.push(config.destinations[0].clone());
        assert_eq!(
            split(&config).unwrap_err(),
            SplitError::DuplicateDestination("backend.demo.svc.cluster.local".to_owned())
        );
    }

    #[test]
    fn assembling_checks_what_it_is_given() {
        let config = rich_config();
        let mut resources = split(&config).expect("split");
        resources.remove(EGRESS_TYPE);
        assert!(
            assemble(&resources)
                .expect("no egress is fine")
                .egress
                .is_empty()
        );

        let mut resources = split(&config).expect("split");
        resources.remove(SETTINGS_TYPE);
        assert_eq!(
            assemble(&resources).unwrap_err(),
            AssembleError::MissingSettings
        );

        let mut resources = split(&config).expect("split");
        let settings = resources[SETTINGS_TYPE]["settings"].clone();
        resources
            .get_mut(DESTINATION_TYPE)
            .unwrap()
            .insert("settings".to_owned(), settings);
        assert!(matches!(
            assemble(&resources).unwrap_err(),
            AssembleError::WrongType { .. }
        ));

        let mut resources = split(&config).expect("split");
        let destinations = resources.get_mut(DESTINATION_TYPE).unwrap();
        let mut renamed = destinations["plain.demo.svc.cluster.local"].clone();
        renamed.name = "other".to_owned();
        destinations.insert("other".to_owned(), renamed);
        assert!(matches!(
            assemble(&resources).unwrap_err(),
            AssembleError::NameMismatch { .. }
        ));

        let mut resources = split(&config).expect("split");
        if let Some(any) = resources
            .get_mut(EGRESS_TYPE)
            .and_then(|set| set.get_mut("egress"))
            .and_then(|r| r.resource.as_mut())
        {
            any.value = vec![0xff, 0xff, 0xff];
        }
        assert!(matches!(
            assemble(&resources).unwrap_err(),
            AssembleError::Decode { .. }
        ));
    }

    #[test]
    fn type_names() {
        assert_eq!(short_type_name(DESTINATION_TYPE), "Destination");
        assert_eq!(short_type_name(SETTINGS_TYPE), "ProxySettings");
        assert_eq!(known_type(EGRESS_TYPE), Some(EGRESS_TYPE));
        assert_eq!(known_type("type.googleapis.com/envoy.Cluster"), None);
    }
}
