//! Rule statuses: which rule wins when several name one Service, and the conditions each rule
//! reports ([`crate::api::rule_status`]).
//!
//! Rules that name a Service (RouteRule, TrafficPolicy) follow the producer/consumer model: a
//! rule in the Service's own namespace is its *producer* rule and applies to every caller; a
//! rule in another namespace is a *consumer* rule and applies only to the callers (proxies) of
//! its own namespace, for whom it takes precedence over the producer rule. So a rule never
//! changes the traffic of callers in a third namespace, and rules only compete (oldest wins)
//! with rules of the same namespace for the same Service.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::not_acting::{self, InertField};
use crate::api::rule_status::{
    ACCEPTED, REASON_ACCEPTED, REASON_CONFLICTED, REASON_INVALID, REASON_NAMESPACES_LIMITED,
    REASON_NAMESPACES_NOT_ALLOWED, REASON_NO_PODS_SELECTED, REASON_RESOLVED,
    REASON_SERVICE_NOT_FOUND, RESOLVED_REFS,
};

/// The `lastTransitionTime` of every reported condition. The translation is pure, so it cannot
/// know when a condition changed: the I/O layer keeps the time already in the status when a
/// condition's status is unchanged, and sets the current time when it changes.
pub const TRANSITION_TIME_PLACEHOLDER: Time = Time(Timestamp::UNIX_EPOCH);

/// The apiserver refuses condition messages longer than this.
const MAX_MESSAGE_LEN: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    RouteRule,
    EgressRule,
    TrafficPolicy,
    AccessPolicy,
    MtlsPolicy,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleKind::RouteRule => "RouteRule",
            RuleKind::EgressRule => "EgressRule",
            RuleKind::TrafficPolicy => "TrafficPolicy",
            RuleKind::AccessPolicy => "AccessPolicy",
            RuleKind::MtlsPolicy => "MtlsPolicy",
        })
    }
}

/// What the control plane should write into one rule's status.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleReport {
    pub kind: RuleKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// `Accepted`, for rules naming a Service `ResolvedRefs` (types and reasons from
    /// [`crate::api::rule_status`]), and `FieldsNotActing` ([`not_acting`]), with `observedGeneration` = `generation` and
    /// `lastTransitionTime` = [`TRANSITION_TIME_PLACEHOLDER`].
    pub conditions: Vec<Condition>,
}

impl RuleReport {
    /// The condition of this type, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// A Service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// Written the way rules write it: `name.namespace`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// The Service a rule in `rule_namespace` names with `reference` (`name` or `name.namespace`).
pub(super) fn parse_service_ref(
    reference: &str,
    rule_namespace: &str,
) -> Result<ServiceKey, String> {
    let (name, namespace) = reference
        .split_once('.')
        .unwrap_or((reference, rule_namespace));
    if is_dns_label(name) && is_dns_label(namespace) {
        Ok(ServiceKey::new(namespace, name))
    } else {
        Err(format!(
            "spec.service: {reference:?} is not NAME or NAME.NAMESPACE (lowercase DNS labels)"
        ))
    }
}

/// An RFC 1123 label: what namespace and Service names are.
pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Who a rule is, what decides precedence between rules, and which of its fields do nothing.
#[derive(Clone, Debug)]
pub(super) struct RuleMeta {
    pub kind: RuleKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    created: Option<Time>,
    /// Spec fields set to a value nothing acts on yet ([`not_acting`]).
    not_acting: Vec<InertField>,
}

impl RuleMeta {
    pub fn new(kind: RuleKind, meta: &ObjectMeta, not_acting: Vec<InertField>) -> Self {
        Self {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            generation: meta.generation,
            created: meta.creation_timestamp.clone(),
            not_acting,
        }
    }

    /// Oldest first; a rule without a creation time (never from the apiserver) last; then by
    /// namespace and name, so the order never depends on the order of the watch cache.
    pub fn precedence(&self) -> (bool, Option<&Time>, &str, &str) {
        (
            self.created.is_none(),
            self.created.as_ref(),
            &self.namespace,
            &self.name,
        )
    }
}

/// Whether a rule is in the configuration proxies receive.
#[derive(Clone, Debug)]
pub(super) enum Acceptance {
    /// The message says to whom the rule applies (producer or consumer rule, ...).
    Accepted(String),
    /// Accepted, but applied to fewer namespaces than it asks for (an EgressRule outside the
    /// mesh namespace naming others); the message says what is ignored.
    Limited(String),
    /// Valid, but everything it asks for is outside what its namespace may affect.
    NotAllowed(String),
    Invalid(Vec<String>),
    /// The message names the winner.
    Conflicted(String),
}

/// Which callers a rule naming a Service applies to: all of them (a producer rule, in the
/// Service's namespace) or only those of the rule's own namespace (a consumer rule).
pub(super) fn is_producer(rule_namespace: &str, service: &ServiceKey) -> bool {
    rule_namespace == service.namespace
}

/// The `Accepted` message of an accepted rule naming `service` from `rule_namespace`.
pub(super) fn scope_message(rule_namespace: &str, service: &ServiceKey) -> String {
    if is_producer(rule_namespace, service) {
        format!(
            "producer rule: applies to all callers of Service {service}, except callers in \
             namespaces that have their own (consumer) rule for it"
        )
    } else {
        format!(
            "consumer rule: applies to callers in namespace {rule_namespace} only, for whom it \
             takes precedence over namespace {}'s own rule for Service {service}",
            service.namespace
        )
    }
}

/// The `Accepted` message of an accepted AccessPolicy or MtlsPolicy: server-side, so only
/// ever about the pods of its own namespace.
pub(super) fn server_side_message(namespace: &str) -> String {
    format!(
        "server-side policy: applies to the inbound traffic of the pods it selects in namespace \
         {namespace} only"
    )
}

/// The winning rule for one Service: the producer rule, and each consumer namespace's.
#[derive(Clone, Debug)]
pub(super) struct PerCaller<T> {
    pub producer: Option<T>,
    /// By the consumer rule's (and so its callers') namespace.
    pub consumers: BTreeMap<String, T>,
}

impl<T> Default for PerCaller<T> {
    fn default() -> Self {
        Self {
            producer: None,
            consumers: BTreeMap::new(),
        }
    }
}

impl<T> PerCaller<T> {
    /// What applies to callers in `namespace` (None: callers in namespaces without a consumer
    /// rule): their own namespace's rule, else the producer's.
    pub fn pick(&self, namespace: Option<&str>) -> Option<&T> {
        namespace
            .and_then(|ns| self.consumers.get(ns))
            .or(self.producer.as_ref())
    }
}

/// What a rule's `service` refers to.
#[derive(Clone, Debug)]
pub(super) enum Resolution {
    Found(ServiceKey),
    NotFound(ServiceKey),
    /// The Service exists but the mesh has no destination for it; says why.
    NotRoutable(ServiceKey, &'static str),
    /// A consumer rule for a Service the Service's `skein.dev/export-to` hides from the rule's
    /// namespace (named).
    NotExported(ServiceKey, String),
    /// `spec.service` cannot name a Service; says why.
    BadReference(String),
    /// An AccessPolicy's (or MtlsPolicy's) selector matches this many pods of its namespace (at
    /// least one).
    PodsSelected(usize),
    /// An MtlsPolicy's selector matches `selected` pods, of which it decides `applies`; older
    /// policies (`others`) decide the rest.
    PodsShared {
        selected: usize,
        applies: usize,
        others: String,
    },
    /// A policy's selector matches no pod of its namespace (named).
    NoPodsSelected(String),
}

/// One rule naming a Service, validated and translated (or not).
pub(super) struct Candidate<T> {
    pub meta: RuleMeta,
    pub target: Result<ServiceKey, String>,
    pub translated: Result<T, Vec<String>>,
}

/// The outcome for every rule of one kind.
pub(super) struct Decided<T> {
    /// What applies to each Service, per caller namespace.
    pub winners: HashMap<ServiceKey, PerCaller<T>>,
    /// Every rule with its target and acceptance, for the reports.
    pub decided: Vec<(RuleMeta, Result<ServiceKey, String>, Acceptance)>,
}

/// Picks, for each Service and each namespace with rules for it, the valid rule that takes
/// precedence (the producer rule from the Service's namespace, a consumer rule from any
/// other); `verb` says what the winner does in the loser's message (`RouteRule demo/a already
/// routes backend.demo`).
pub(super) fn decide<T>(
    candidates: impl IntoIterator<Item = Candidate<T>>,
    verb: &str,
) -> Decided<T> {
    let mut decided = Vec::new();
    let mut valid = Vec::new();
    for candidate in candidates {
        match (candidate.translated, &candidate.target) {
            (Ok(value), Ok(key)) => valid.push((key.clone(), candidate.meta, value)),
            (Err(problems), _) => {
                decided.push((
                    candidate.meta,
                    candidate.target,
                    Acceptance::Invalid(problems),
                ));
            }
            // Validation checks the reference; this keeps a rule that slipped through out.
            (Ok(_), Err(problem)) => {
                let problems = vec![problem.clone()];
                decided.push((
                    candidate.meta,
                    candidate.target,
                    Acceptance::Invalid(problems),
                ));
            }
        }
    }
    // Rules compete only within one namespace: grouped by Service, then rule namespace.
    valid.sort_by(|a, b| {
        (&a.0, &a.1.namespace, a.1.precedence()).cmp(&(&b.0, &b.1.namespace, b.1.precedence()))
    });
    let mut winners: HashMap<ServiceKey, PerCaller<T>> = HashMap::new();
    let mut winner_name = String::new();
    for (key, meta, value) in valid {
        let per_caller = winners.entry(key.clone()).or_default();
        let producer = is_producer(&meta.namespace, &key);
        let slot_taken = if producer {
            per_caller.producer.is_some()
        } else {
            per_caller.consumers.contains_key(&meta.namespace)
        };
        let acceptance = if slot_taken {
            let callers = if producer {
                String::new()
            } else {
                format!(" for callers in namespace {}", meta.namespace)
            };
            Acceptance::Conflicted(format!(
                "{winner_name} {verb} {key}{callers}; this one is ignored"
            ))
        } else {
            winner_name = format!("{} {}/{}", meta.kind, meta.namespace, meta.name);
            if producer {
                per_caller.producer = Some(value);
            } else {
                per_caller.consumers.insert(meta.namespace.clone(), value);
            }
            Acceptance::Accepted(scope_message(&meta.namespace, &key))
        };
        decided.push((meta, Ok(key), acceptance));
    }
    Decided { winners, decided }
}

/// The report of one rule; `resolution` is None for rules that name no Service.
pub(super) fn report(
    meta: &RuleMeta,
    acceptance: &Acceptance,
    resolution: Option<&Resolution>,
) -> RuleReport {
    let condition = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: truncate(message),
        observed_generation: meta.generation,
        last_transition_time: TRANSITION_TIME_PLACEHOLDER,
    };
    let mut conditions = vec![match acceptance {
        Acceptance::Accepted(message) => {
            condition(ACCEPTED, true, REASON_ACCEPTED, message.clone())
        }
        Acceptance::Limited(message) => {
            condition(ACCEPTED, true, REASON_NAMESPACES_LIMITED, message.clone())
        }
        Acceptance::NotAllowed(message) => condition(
            ACCEPTED,
            false,
            REASON_NAMESPACES_NOT_ALLOWED,
            message.clone(),
        ),
        Acceptance::Invalid(problems) => {
            condition(ACCEPTED, false, REASON_INVALID, problems.join("; "))
        }
        Acceptance::Conflicted(message) => {
            condition(ACCEPTED, false, REASON_CONFLICTED, message.clone())
        }
    }];
    if let Some(resolution) = resolution {
        conditions.push(match resolution {
            Resolution::Found(key) => condition(
                RESOLVED_REFS,
                true,
                REASON_RESOLVED,
                format!("Service {key} exists"),
            ),
            Resolution::NotFound(key) => condition(
                RESOLVED_REFS,
                false,
                REASON_SERVICE_NOT_FOUND,
                format!("Service {key} does not exist; the rule applies once it does"),
            ),
            Resolution::NotRoutable(key, why) => condition(
                RESOLVED_REFS,
                false,
                REASON_SERVICE_NOT_FOUND,
                format!("Service {key} {why}, so the mesh has no destination for it"),
            ),
            Resolution::NotExported(key, namespace) => condition(
                RESOLVED_REFS,
                false,
                REASON_SERVICE_NOT_FOUND,
                format!(
                    "Service {key} is not exported to namespace {namespace} ({}), so this \
                     consumer rule reaches no caller",
                    crate::api::names::EXPORT_TO_ANNOTATION
                ),
            ),
            Resolution::BadReference(problem) => condition(
                RESOLVED_REFS,
                false,
                REASON_SERVICE_NOT_FOUND,
                problem.clone(),
            ),
            Resolution::PodsSelected(count) => condition(
                RESOLVED_REFS,
                true,
                REASON_RESOLVED,
                format!("the selector matches {count} pod(s)"),
            ),
            Resolution::PodsShared {
                selected,
                applies,
                others,
            } => condition(
                RESOLVED_REFS,
                true,
                REASON_RESOLVED,
                format!(
                    "the selector matches {selected} pod(s); the policy applies to {applies} of \
                     them, the older {others} to the others"
                ),
            ),
            Resolution::NoPodsSelected(namespace) => condition(
                RESOLVED_REFS,
                false,
                REASON_NO_PODS_SELECTED,
                format!(
                    "no pod in namespace {namespace} matches the selector (yet); the policy \
                     applies to matching pods as they appear"
                ),
            ),
        });
    }
    let (inert, reason, message) = not_acting::condition(&meta.not_acting);
    conditions.push(condition(
        not_acting::FIELDS_NOT_ACTING,
        inert,
        reason,
        message,
    ));
    RuleReport {
        kind: meta.kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        generation: meta.generation,
        conditions,
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}
