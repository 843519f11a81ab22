//! `pod-graceful-drain status` (also `kubectl pgd status`, through a `kubectl-pgd` link on the
//! PATH): what an operator asks first. Which pods are draining, until when, why and at whose
//! request, whether they are still listed in an EndpointSlice; and for each installation, who
//! leads and how fresh its Lease is. Read-only: it needs `list` on pods, EndpointSlices,
//! Deployments and Leases, nothing else (it cannot check seals: their keys stay in the
//! product's Secret, so it shows what the pods' readable annotations say).
//!
//! Installations are found by their Deployments (label `app.kubernetes.io/name=pod-graceful-drain`),
//! whose environment names the instance and the Lease, as the chart writes it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::core::endpoints::{PodRef, lists_ready};
use crate::core::keys::{
    DELETE_AT, DRAINING_LABEL, OWN_POD_LABEL, REASON, REQUESTED_BY, SEAL, STARTED_AT,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("pod-graceful-drain is not installed: no Deployment labelled {}={}{}", OWN_POD_LABEL.0, OWN_POD_LABEL.1, .0.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    NotInstalled(Option<String>),
}

/// Everything the view shows, as read at `read_at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub read_at: Timestamp,
    pub installations: Vec<Installation>,
    pub draining: Vec<Draining>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Installation {
    pub namespace: String,
    pub deployment: String,
    pub instance: String,
    pub ready_replicas: i32,
    pub leader: Option<String>,
    /// When the leader last renewed its Lease.
    pub renewed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Draining {
    pub namespace: String,
    pub pod: String,
    /// The draining label's value: which installation drains it.
    pub instance: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub started_at: Option<Timestamp>,
    pub delete_at: Option<Timestamp>,
    /// Whether a seal is written (whether it verifies only the product can tell).
    pub sealed: bool,
    /// Still listed as ready in an EndpointSlice.
    pub still_listed: bool,
    /// Already being deleted (its grace period running).
    pub terminating: bool,
}

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Reads the report: draining pods of `namespace` (or every namespace), every installation.
pub async fn read(client: &Client, namespace: Option<&str>) -> Result<Report, StatusError> {
    let own = ListParams::default().labels(&format!("{}={}", OWN_POD_LABEL.0, OWN_POD_LABEL.1));
    let deployments = Api::<Deployment>::all(client.clone()).list(&own).await?;
    if deployments.items.is_empty() {
        return Err(StatusError::NotInstalled(None));
    }
    let mut installations = Vec::new();
    for d in &deployments.items {
        installations.push(installation(client, d).await?);
    }
    let pods = match namespace {
        Some(ns) => Api::<Pod>::namespaced(client.clone(), ns),
        None => Api::<Pod>::all(client.clone()),
    };
    let marked = pods
        .list_metadata(&ListParams::default().labels(DRAINING_LABEL))
        .await?;
    let namespaces: BTreeSet<String> = marked.items.iter().filter_map(|p| p.namespace()).collect();
    let mut slices = BTreeMap::new();
    for ns in namespaces {
        let listed = Api::<EndpointSlice>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        slices.insert(ns, listed.items);
    }
    let mut draining: Vec<Draining> = marked
        .items
        .iter()
        .map(|p| draining_of(p, &slices))
        .collect();
    draining.sort_by(|a, b| {
        (a.delete_at, &a.namespace, &a.pod).cmp(&(b.delete_at, &b.namespace, &b.pod))
    });
    Ok(Report {
        read_at: Timestamp::now(),
        installations,
        draining,
    })
}

/// One installation, from its Deployment's environment and its Lease.
async fn installation(client: &Client, d: &Deployment) -> Result<Installation, StatusError> {
    let namespace = d.namespace().unwrap_or_default();
    let env = |name: &str| -> Option<String> {
        d.spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == name)?
            .value
            .clone()
    };
    let instance = env("PGD_INSTANCE").unwrap_or_else(|| "default".into());
    let lease_name = env("PGD_LEASE_NAME").unwrap_or_else(|| "pod-graceful-drain".into());
    let lease = Api::<Lease>::namespaced(client.clone(), &namespace)
        .get_opt(&lease_name)
        .await?;
    let spec = lease.and_then(|l| l.spec);
    Ok(Installation {
        namespace,
        deployment: d.name_any(),
        instance,
        ready_replicas: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        leader: spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        renewed_at: spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0),
    })
}

fn draining_of(
    p: &PartialObjectMeta<Pod>,
    slices: &BTreeMap<String, Vec<EndpointSlice>>,
) -> Draining {
    let a = p.annotations();
    let time = |k: &str| a.get(k).and_then(|v| v.trim().parse::<Timestamp>().ok());
    let namespace = p.namespace().unwrap_or_default();
    let target = PodRef {
        name: p.name_any(),
        uid: p.uid(),
    };
    let still_listed = slices
        .get(&namespace)
        .is_some_and(|s| lists_ready(s, None, &target));
    Draining {
        pod: p.name_any(),
        instance: p.labels().get(DRAINING_LABEL).cloned().unwrap_or_default(),
        reason: a.get(REASON).cloned(),
        requested_by: a.get(REQUESTED_BY).cloned(),
        started_at: time(STARTED_AT),
        delete_at: time(DELETE_AT),
        sealed: a.contains_key(SEAL),
        still_listed,
        terminating: p.metadata.deletion_timestamp.is_some(),
        namespace,
    }
}

/// The report as people read it: installations first, then one row per draining pod.
pub fn table(report: &Report) -> String {
    let now = report.read_at;
    let mut out = String::new();
    for i in &report.installations {
        let leader = match (&i.leader, i.renewed_at) {
            (Some(l), Some(t)) => format!("leader {l}, renewed {} ago", ago(now, t)),
            (Some(l), None) => format!("leader {l}"),
            _ => "no leader: nothing is deleted until one is elected".into(),
        };
        out.push_str(&format!(
            "installation {} (Deployment {}/{}, {} ready): {leader}\n",
            i.instance, i.namespace, i.deployment, i.ready_replicas
        ));
    }
    if report.draining.is_empty() {
        out.push_str("no pod is draining\n");
        return out;
    }
    let header = [
        "NAMESPACE",
        "POD",
        "INSTANCE",
        "REASON",
        "REQUESTED BY",
        "STARTED",
        "DELETE AT",
        "LEFT",
        "ENDPOINTS",
    ];
    let rows: Vec<[String; 9]> = report.draining.iter().map(|d| row(d, now)).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    out.push_str(&line(&header.map(String::from)));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// One draining pod's cells, in the header's order.
fn row(d: &Draining, now: Timestamp) -> [String; 9] {
    let t = |t: Option<Timestamp>| t.map_or("?".into(), |t| t.strftime("%H:%M:%S").to_string());
    let left = match (d.terminating, d.delete_at) {
        (true, _) => "terminating".into(),
        (false, Some(at)) if at > now => seconds(at.duration_since(now)),
        (false, Some(_)) => "due".into(),
        (false, None) => "?".into(),
    };
    [
        d.namespace.clone(),
        d.pod.clone(),
        if d.sealed {
            d.instance.clone()
        } else {
            format!("{} (no seal)", d.instance)
        },
        d.reason.clone().unwrap_or_else(|| "?".into()),
        d.requested_by.clone().unwrap_or_else(|| "?".into()),
        t(d.started_at),
        t(d.delete_at),
        left,
        if d.still_listed {
            "still listed"
        } else {
            "out"
        }
        .into(),
    ]
}

fn seconds(d: jiff::SignedDuration) -> String {
    format!("{}s", d.as_secs())
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    seconds(now.duration_since(then).max(jiff::SignedDuration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn report(draining: Vec<Draining>, leader: Option<&str>) -> Report {
        Report {
            read_at: at("2026-12-02T10:00:00Z"),
            installations: vec![Installation {
                namespace: "pgd".into(),
                deployment: "pgd-pod-graceful-drain".into(),
                instance: "pgd.pgd".into(),
                ready_replicas: 2,
                leader: leader.map(String::from),
                renewed_at: Some(at("2026-12-02T09:59:57Z")),
            }],
            draining,
        }
    }

    fn web(name: &str, delete_at: &str, listed: bool) -> Draining {
        Draining {
            namespace: "shop".into(),
            pod: name.into(),
            instance: "pgd.pgd".into(),
            reason: Some("eviction".into()),
            requested_by: Some("system:serviceaccount:kube-system:drainer".into()),
            started_at: Some(at("2026-12-02T09:59:30Z")),
            delete_at: Some(at(delete_at)),
            sealed: true,
            still_listed: listed,
            terminating: false,
        }
    }

    #[test]
    fn draining_pods_show_their_time_left_and_endpoints() {
        let text = table(&report(
            vec![
                web("web-1", "2026-12-02T10:00:42Z", false),
                web("web-2", "2026-12-02T09:59:59Z", true),
            ],
            Some("pgd-pod-graceful-drain-abc"),
        ));
        assert!(
            text.starts_with("installation pgd.pgd (Deployment pgd/pgd-pod-graceful-drain, 2 ready): leader pgd-pod-graceful-drain-abc, renewed 3s ago\n"),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert!(
            rows[0].starts_with("shop       web-1  pgd.pgd   eviction"),
            "{text}"
        );
        assert!(rows[0].contains("09:59:30  10:00:42   42s   out"), "{text}");
        assert!(rows[1].contains("due   still listed"), "{text}");
    }

    #[test]
    fn nothing_draining_and_no_leader_are_said_plainly() {
        let text = table(&report(vec![], None));
        assert!(
            text.contains("no leader: nothing is deleted until one is elected"),
            "{text}"
        );
        assert!(text.ends_with("no pod is draining\n"), "{text}");
    }

    #[test]
    fn json_has_every_field_for_scripts() {
        let r = report(vec![web("web-1", "2026-12-02T10:00:42Z", false)], Some("a"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["draining"][0]["delete_at"], "2026-12-02T10:00:42Z");
        assert_eq!(v["draining"][0]["still_listed"], false);
        assert_eq!(v["installations"][0]["leader"], "a");
    }
}
