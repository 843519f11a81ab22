//! Which labels to take off a pod so that no Service, no owning controller and no
//! PodDisruptionBudget selects it any more, while every other label stays (NetworkPolicies,
//! monitoring and log routing keep working for the draining pod).
//!
//! Removing a key breaks every selector that requires that key to be present (equality, `In`,
//! `Exists`); the smallest set of keys that breaks every selector that matches the pod is a
//! minimum hitting set. Real pods have a handful of such keys, so an exhaustive search in order of
//! size (ties broken by key order, so the answer is deterministic) is exact and cheap; past
//! [`EXACT_LIMIT`] candidate keys a greedy choice is used instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::selector::Selector;

/// Above this many candidate keys, fall back to a greedy (still correct, maybe not minimal) set.
pub const EXACT_LIMIT: usize = 16;

/// Something that selects pods: a Service, the owning controller, a PodDisruptionBudget.
#[derive(Debug, Clone)]
pub struct Selecting {
    /// For messages and events, e.g. `Service web`.
    pub what: String,
    pub selector: Selector,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolationError {
    /// The selector matches the pod through negative requirements only (`NotIn`, `DoesNotExist`):
    /// removing labels can never take the pod out of it.
    #[error(
        "{0} selects the pod without requiring any of its labels, so no label removal can isolate it"
    )]
    Unbreakable(String),
}

/// The label keys to remove (sorted). Empty when nothing selects the pod.
pub fn keys_to_remove(
    labels: &BTreeMap<String, String>,
    selecting: &[&Selecting],
) -> Result<BTreeSet<String>, IsolationError> {
    // For each selector that matches now, the pod's keys whose removal breaks it.
    let mut sets: Vec<BTreeSet<&str>> = Vec::new();
    for s in selecting.iter().filter(|s| s.selector.matches(labels)) {
        let keys: BTreeSet<&str> = s
            .selector
            .positive_keys()
            .into_iter()
            .filter(|k| labels.contains_key(*k))
            .collect();
        if keys.is_empty() {
            return Err(IsolationError::Unbreakable(s.what.clone()));
        }
        sets.push(keys);
    }
    let candidates: Vec<&str> = sets
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let chosen = if candidates.len() <= EXACT_LIMIT {
        smallest_hitting_set(&candidates, &sets)
    } else {
        greedy_hitting_set(&sets)
    };
    Ok(chosen.into_iter().map(str::to_string).collect())
}

fn hits_all(chosen: &BTreeSet<&str>, sets: &[BTreeSet<&str>]) -> bool {
    sets.iter().all(|s| !s.is_disjoint(chosen))
}

fn smallest_hitting_set<'a>(
    candidates: &[&'a str],
    sets: &[BTreeSet<&'a str>],
) -> BTreeSet<&'a str> {
    for size in 0..=candidates.len() {
        // Index combinations of `size` out of `candidates`, in lexicographic order.
        let mut idx: Vec<usize> = (0..size).collect();
        loop {
            let chosen: BTreeSet<&str> = idx.iter().map(|&i| candidates[i]).collect();
            if hits_all(&chosen, sets) {
                return chosen;
            }
            // Advance to the next combination, or stop when there is none.
            let Some(pos) = (0..size)
                .rev()
                .find(|&i| idx[i] != i + candidates.len() - size)
            else {
                break;
            };
            idx[pos] += 1;
            for j in pos + 1..size {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    candidates.iter().copied().collect()
}

fn greedy_hitting_set<'a>(sets: &[BTreeSet<&'a str>]) -> BTreeSet<&'a str> {
    let mut chosen = BTreeSet::new();
    let mut open: Vec<&BTreeSet<&str>> = sets.iter().collect();
    while !open.is_empty() {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &open {
            for k in s.iter() {
                *counts.entry(k).or_default() += 1;
            }
        }
        // Most selectors broken first; the smallest key on ties.
        let best = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(k, _)| *k)
            .expect("open sets are non-empty");
        chosen.insert(best);
        open.retain(|s| !s.contains(best));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::core::test_support::map as labels;

    fn svc(pairs: &[(&str, &str)]) -> Selector {
        Selector::from_service(Some(&labels(pairs))).unwrap()
    }

    fn ls(v: serde_json::Value) -> Selector {
        Selector::from_label_selector(&serde_json::from_value(v).unwrap())
            .unwrap()
            .unwrap()
    }

    fn plan(pod: &[(&str, &str)], selectors: &[&Selector]) -> Result<Vec<String>, IsolationError> {
        let selecting: Vec<Selecting> = selectors
            .iter()
            .enumerate()
            .map(|(i, s)| Selecting {
                what: format!("selector {i}"),
                selector: (*s).clone(),
            })
            .collect();
        let selecting: Vec<&Selecting> = selecting.iter().collect();
        keys_to_remove(&labels(pod), &selecting).map(|s| s.into_iter().collect())
    }

    #[test]
    fn one_shared_key_isolates_from_service_controller_and_budget() {
        let pod = [("app", "web"), ("pod-template-hash", "abc"), ("team", "x")];
        let service = svc(&[("app", "web")]);
        let rs = ls(json!({"matchLabels": {"app": "web", "pod-template-hash": "abc"}}));
        let pdb = ls(json!({"matchLabels": {"app": "web"}}));
        assert_eq!(plan(&pod, &[&service, &rs, &pdb]).unwrap(), vec!["app"]);
    }

    #[test]
    fn disjoint_selectors_need_one_key_each() {
        let pod = [
            ("app", "web"),
            ("pod-template-hash", "abc"),
            ("lb", "public"),
        ];
        let service = svc(&[("lb", "public")]);
        let rs = ls(json!({"matchLabels": {"pod-template-hash": "abc"}}));
        assert_eq!(
            plan(&pod, &[&service, &rs]).unwrap(),
            vec!["lb", "pod-template-hash"]
        );
    }

    #[test]
    fn selectors_that_do_not_match_are_ignored() {
        let pod = [("app", "web")];
        let other = svc(&[("app", "api")]);
        assert!(plan(&pod, &[&other]).unwrap().is_empty());
        assert!(plan(&pod, &[]).unwrap().is_empty());
    }

    #[test]
    fn exists_and_in_count_as_removable_but_not_in_does_not() {
        let pod = [("app", "web"), ("env", "prod")];
        let s = ls(json!({"matchExpressions": [
            {"key": "app", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]}
        ]}));
        assert_eq!(plan(&pod, &[&s]).unwrap(), vec!["app"]);
    }

    #[test]
    fn negative_only_selector_cannot_be_broken() {
        let pod = [("app", "web")];
        let s = ls(json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}));
        assert_eq!(
            plan(&pod, &[&s]),
            Err(IsolationError::Unbreakable("selector 0".into()))
        );
    }

    #[test]
    fn the_smallest_set_wins_over_the_first_keys() {
        // "a" breaks only one selector; "z" breaks all three.
        let pod = [("a", "1"), ("b", "1"), ("c", "1"), ("z", "1")];
        let s1 = svc(&[("a", "1"), ("z", "1")]);
        let s2 = svc(&[("b", "1"), ("z", "1")]);
        let s3 = svc(&[("c", "1"), ("z", "1")]);
        assert_eq!(plan(&pod, &[&s1, &s2, &s3]).unwrap(), vec!["z"]);
    }

    #[test]
    fn many_keys_fall_back_to_a_greedy_set_that_still_isolates() {
        let pod: Vec<(String, String)> =
            (0..40).map(|i| (format!("k{i:02}"), "v".into())).collect();
        let pod_ref: Vec<(&str, &str)> =
            pod.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sels: Vec<Selector> = (0..20)
            .map(|i| svc(&[(pod_ref[2 * i].0, "v"), (pod_ref[2 * i + 1].0, "v")]))
            .collect();
        let refs: Vec<&Selector> = sels.iter().collect();
        let keys = plan(&pod_ref, &refs).unwrap();
        let mut left = labels(&pod_ref);
        for k in &keys {
            left.remove(k);
        }
        assert!(sels.iter().all(|s| !s.matches(&left)));
        assert_eq!(keys.len(), 20);
    }
}
