//! The demo app as most tests need it: a Service and a Deployment, rolled out.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::Value;

use crate::error::Result;
use crate::namespace::TestEnv;
use crate::objects;
use crate::wait::{self, conditions};

impl TestEnv {
    /// Creates Service `name` and Deployment `name` (the demo app, `replicas`, `extra_pod_spec`
    /// merged into the pod spec), waits until the Deployment is Available and returns its pods.
    pub async fn serve_demo(
        &self,
        name: &str,
        replicas: i32,
        extra_pod_spec: Value,
    ) -> Result<Vec<Pod>> {
        let pp = PostParams::default();
        self.api::<Service>()
            .create(&pp, &objects::service(name))
            .await?;
        let deployments: Api<Deployment> = self.api();
        deployments
            .create(
                &pp,
                &objects::deployment_with(name, replicas, extra_pod_spec),
            )
            .await?;
        wait::until(
            &deployments,
            name,
            &format!("deployment {name} to be Available"),
            Duration::from_secs(90),
            conditions::deployment_complete,
        )
        .await?;
        Ok(self
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("{}={name}", objects::APP_LABEL)))
            .await?
            .items)
    }
}
