//! Logs: text or JSON, filtered by RUST_LOG (default `info`). OpenTelemetry export over OTLP is
//! still to come (issue 4); until then spans are logged only.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    // kube-leader-election reports every renewal at info; only its warnings matter here.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            "kube_leader_election=warn"
                .parse()
                .expect("static directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
