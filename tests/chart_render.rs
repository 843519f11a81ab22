//! The chart as rendered: `helm lint` and `helm template` only, no cluster and no namespace.
//! What a running cluster does with the chart is in `e2e_chart.rs`.

use pgd_harness::helm_offline;
use pgd_harness::product::chart_dir;

#[test]
fn the_chart_lints_strictly() -> anyhow::Result<()> {
    let lint = helm_offline()
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .output()?;
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    Ok(())
}

/// Renders the chart with `helm template` and the given `--set` values.
fn render(sets: &[&str]) -> anyhow::Result<String> {
    let mut cmd = helm_offline();
    cmd.args(["template", "t", "-n", "pgd"]).arg(chart_dir());
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// cert-manager and NetworkPolicy are not running on the testbed: what the chart asks of them
/// is checked as rendered.
#[test]
fn the_cert_manager_and_network_policy_options_render_what_they_need() -> anyhow::Result<()> {
    let default = render(&[])?;
    assert!(
        default.contains("kind: Secret"),
        "self-managed TLS: the chart owns an empty Secret"
    );
    assert!(!default.contains("cert-manager.io"));
    assert!(
        !default.contains("caBundle"),
        "the CA bundle is injected, never rendered"
    );
    assert!(default.contains("value: \"true\"\n            - name: PGD_CERT_SECONDS"));

    let cm = render(&["tls.certManager.enabled=true"])?;
    assert_eq!(
        cm.matches("kind: Certificate\n").count(),
        2,
        "a CA and a serving Certificate"
    );
    assert_eq!(
        cm.matches("cert-manager.io/inject-ca-from: pgd/t-pod-graceful-drain-serving")
            .count(),
        2
    );
    // The one Secret rendered is the seal keys'; cert-manager writes the TLS one.
    assert_eq!(
        cm.matches("kind: Secret\n").count(),
        1,
        "cert-manager writes the TLS Secret"
    );
    assert!(cm.contains("name: t-pod-graceful-drain-seal\n"));
    assert!(!cm.contains("name: t-pod-graceful-drain-tls\n  namespace"));
    assert!(cm.contains("- name: PGD_TLS_MANAGE\n              value: \"false\""));
    assert!(cm.contains("PGD_UNINSTALL_DELETE_SECRETS"));
    assert!(
        cm.contains("verbs: [delete]"),
        "no update of webhook configurations without self-managed TLS"
    );

    let np = render(&[
        "networkPolicy.enabled=true",
        "networkPolicy.apiServerCIDRs={10.200.0.0/24}",
    ])?;
    assert!(np.contains("kind: NetworkPolicy"));
    assert!(np.contains("- ipBlock: {cidr: \"10.200.0.0/24\"}"));
    let refused = helm_offline()
        .args(["template", "t"])
        .arg(chart_dir())
        .args(["--set", "networkPolicy.enabled=true"])
        .output()?;
    assert!(
        !refused.status.success(),
        "a NetworkPolicy without API server CIDRs would block every call"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("apiServerCIDRs"));
    Ok(())
}

/// The Prometheus Operator and Grafana objects (no operator runs on the testbed: checked as
/// rendered; the alerts themselves are checked by promtool in chart_alerts.rs).
#[test]
fn the_metrics_options_render_a_service_monitor_the_alerts_and_the_dashboard() -> anyhow::Result<()>
{
    let default = render(&[])?;
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            !default.contains(&format!("kind: {kind}")),
            "{kind} is off by default"
        );
    }
    assert!(
        !default.contains("-dashboard"),
        "the dashboard is off by default"
    );
    assert!(
        default.contains("- {name: metrics, port: 8081, targetPort: health}"),
        "the Service names the metrics port"
    );
    let all = render(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        "metrics.prometheusRule.enabled=true",
        "metrics.dashboard.enabled=true",
    ])?;
    assert!(all.contains("kind: ServiceMonitor"));
    assert!(all.contains("- port: metrics"));
    assert!(all.contains("release: kube-prometheus"));
    assert!(all.contains("kind: PrometheusRule"));
    let alerts = std::fs::read_to_string(chart_dir().join("files/alerts.yaml"))?;
    for alert in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            all.contains(&format!("alert: {alert}")),
            "{alert} not in the PrometheusRule"
        );
    }
    assert!(all.contains("name: t-pod-graceful-drain-dashboard"));
    assert!(all.contains("grafana_dashboard: \"1\""));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        chart_dir().join("files/dashboard.json"),
    )?)?;
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 5));
    Ok(())
}
