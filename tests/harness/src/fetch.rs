//! HTTP requests from inside the cluster's network, on any cluster: a pod running
//! `demo-app fetch` sends the requests and prints one JSON line per request, which the test reads
//! from the pod's log. Pinning that pod to a node measures the Service as seen from that node.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{LogParams, PostParams};
use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::objects::DEMO_IMAGE;
use crate::wait;

/// One request's outcome, as `demo-app fetch` prints it.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchResult {
    pub seq: u64,
    pub at_ms: u64,
    /// HTTP status; 0 when the request failed before an answer (refused, reset, timeout).
    pub status: u16,
    /// The pod that answered (the demo app's X-Served-By header).
    #[serde(default)]
    pub served_by: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl FetchResult {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// What traffic to send: `count` GETs of `url`, one every `interval`, from a pod on `node` (any
/// node when `None`).
#[derive(Debug, Clone, Copy)]
pub struct Traffic<'a> {
    pub url: &'a str,
    pub node: Option<&'a str>,
    pub count: u32,
    pub interval: Duration,
}

/// A running `demo-app fetch` pod.
pub struct FetchPod {
    api: Api<Pod>,
    name: String,
    expected: Duration,
}

impl FetchPod {
    /// Starts the traffic from a pod named `name`, once the URL has answered 200 (up to 30 s of
    /// uncounted warm-up: a new Service is reachable only after kube-proxy has programmed it).
    pub async fn start(api: &Api<Pod>, name: &str, traffic: Traffic<'_>) -> Result<FetchPod> {
        let Traffic {
            url,
            node,
            count,
            interval,
        } = traffic;
        let mut spec = json!({
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "fetch",
                "image": DEMO_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "args": ["fetch", "-url", url, "-count", count.to_string(),
                         "-interval", format!("{}ms", interval.as_millis()), "-timeout", "2s",
                         "-warmup", "30s"],
                "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                    "capabilities": {"drop": ["ALL"]}}
            }]
        });
        if let Some(node) = node {
            spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"role": "fetch"}},
            "spec": spec
        }))
        .expect("fetch pod manifest");
        api.create(&PostParams::default(), &pod).await?;
        Ok(FetchPod {
            api: api.clone(),
            name: name.to_string(),
            expected: interval * count + Duration::from_secs(count as u64 / 10 + 35),
        })
    }

    /// Waits for the pod to finish and returns every request's outcome.
    pub async fn results(self) -> Result<Vec<FetchResult>> {
        let what = format!("fetch pod {} to finish", self.name);
        let pod = wait::until(
            &self.api,
            &self.name,
            &what,
            self.expected + Duration::from_secs(60),
            wait::conditions::pod_finished,
        )
        .await?;
        let log = self.api.logs(&self.name, &LogParams::default()).await?;
        let phase = pod
            .and_then(|p| p.status)
            .and_then(|s| s.phase)
            .unwrap_or_default();
        if phase != "Succeeded" {
            return Err(Error::Unexpected(format!(
                "fetch pod {} ended {phase}; log:\n{log}",
                self.name
            )));
        }
        let results: Vec<FetchResult> = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Unexpected(format!("fetch pod log: {e}\n{log}")))?;
        Ok(results)
    }
}

/// Runs a fetch pod to the end and returns every request's outcome.
pub async fn fetch(api: &Api<Pod>, name: &str, traffic: Traffic<'_>) -> Result<Vec<FetchResult>> {
    FetchPod::start(api, name, traffic).await?.results().await
}
