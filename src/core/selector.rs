//! Label selectors, evaluated the way the API server evaluates them, plus what isolation needs to
//! know about them: which label keys a selector depends on *positively* (removing such a key from a
//! pod makes the selector stop matching it).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// One requirement of a selector, in the API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A selector that matches a pod when every requirement holds. An empty requirement list is
/// never built from the API (see [`Selector::from_label_selector`]); such selectors select nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// A selector the API would reject (an unknown operator, `In` without values, ...): it selects
/// nothing, as the API server treats it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector requirement on key {key:?}: {reason}")]
pub struct InvalidSelector {
    pub key: String,
    pub reason: &'static str,
}

impl Selector {
    /// A Service's `spec.selector` (a plain map). `None` for a Service without a selector (its
    /// endpoints are managed by hand, so taking labels away cannot remove the pod from it) and for
    /// an empty map, which selects nothing.
    pub fn from_service(selector: Option<&BTreeMap<String, String>>) -> Option<Selector> {
        let map = selector.filter(|m| !m.is_empty())?;
        Some(Selector {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        })
    }

    /// A `metav1.LabelSelector` (controllers, PodDisruptionBudgets). `Ok(None)` when it is empty:
    /// for PodDisruptionBudgets the eviction handler treats an empty selector as matching nothing,
    /// and controllers always have a non-empty one.
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Option<Selector>, InvalidSelector> {
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for expr in sel.match_expressions.iter().flatten() {
            requirements.push(requirement(expr)?);
        }
        Ok((!requirements.is_empty()).then_some(Selector { requirements }))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Keys whose removal from a matching pod makes this selector stop matching it.
    pub fn positive_keys(&self) -> BTreeSet<&str> {
        self.requirements
            .iter()
            .filter_map(|r| match r {
                Requirement::Equals(k, _) | Requirement::In(k, _) | Requirement::Exists(k) => {
                    Some(k.as_str())
                }
                Requirement::NotIn(..) | Requirement::DoesNotExist(_) => None,
            })
            .collect()
    }
}

fn requirement(expr: &LabelSelectorRequirement) -> Result<Requirement, InvalidSelector> {
    let key = expr.key.clone();
    let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
    let invalid = |reason| InvalidSelector {
        key: expr.key.clone(),
        reason,
    };
    match expr.operator.as_str() {
        "In" if values.is_empty() => Err(invalid("operator In needs values")),
        "NotIn" if values.is_empty() => Err(invalid("operator NotIn needs values")),
        "In" => Ok(Requirement::In(key, values)),
        "NotIn" => Ok(Requirement::NotIn(key, values)),
        "Exists" | "DoesNotExist" if !values.is_empty() => Err(invalid("values must be empty")),
        "Exists" => Ok(Requirement::Exists(key)),
        "DoesNotExist" => Ok(Requirement::DoesNotExist(key)),
        _ => Err(invalid("unknown operator")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::core::test_support::map as labels;

    fn sel(v: serde_json::Value) -> Option<Selector> {
        Selector::from_label_selector(&serde_json::from_value(v).unwrap()).unwrap()
    }

    #[test]
    fn service_selector_matches_all_pairs() {
        let s = Selector::from_service(Some(&labels(&[("app", "web"), ("tier", "fe")]))).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn service_without_or_with_empty_selector_selects_nothing() {
        assert_eq!(Selector::from_service(None), None);
        assert_eq!(Selector::from_service(Some(&BTreeMap::new())), None);
    }

    #[test]
    fn empty_label_selector_selects_nothing() {
        assert_eq!(sel(json!({})), None);
        assert_eq!(
            sel(json!({"matchLabels": {}, "matchExpressions": []})),
            None
        );
    }

    #[test]
    fn expressions_follow_the_api_semantics() {
        let s = sel(json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "team", "operator": "Exists"}
        ]}))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "a"), ("team", "x")])));
        assert!(s.matches(&labels(&[("app", "b"), ("team", "x"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "c"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "a"), ("team", "x"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("app", "a"), ("team", "x"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "a")])));
        let keys: Vec<&str> = s.positive_keys().into_iter().collect();
        assert_eq!(keys, vec!["app", "team"]);
    }

    #[test]
    fn malformed_expressions_are_rejected() {
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Matches", "values": ["x"]}]}),
        ] {
            let parsed: LabelSelector = serde_json::from_value(bad.clone()).unwrap();
            assert!(
                Selector::from_label_selector(&parsed).is_err(),
                "accepted {bad}"
            );
        }
    }
}
