//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them. Wires the pieces: configuration, telemetry, caches, the admission server (every
//! replica), the election and the deleter (the leader only), and a graceful SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pod_graceful_drain::admission::{self, Admission};
use pod_graceful_drain::config::{Args, Command, StatusArgs, UninstallArgs};
use pod_graceful_drain::deleter::Deleter;
use pod_graceful_drain::k8s;
use pod_graceful_drain::k8s::clock::Clock;
use pod_graceful_drain::k8s::cluster_view::ClusterView;
use pod_graceful_drain::k8s::events::Events;
use pod_graceful_drain::k8s::seal_keys::{KeyKeeper, SealKeys};
use pod_graceful_drain::leader::Election;
use pod_graceful_drain::metrics::Metrics;
use pod_graceful_drain::server::{self, Readiness};
use pod_graceful_drain::status::Output;
use pod_graceful_drain::telemetry;
use pod_graceful_drain::tls::renewal::Want;
use pod_graceful_drain::tls::secret::{CertSecret, Manage};
use pod_graceful_drain::tls::{ClientAuthConfig, ReloadingCert, ServerTls};
use pod_graceful_drain::uninstall::Uninstall;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    args.validate().context("invalid configuration")?;
    let _telemetry = telemetry::init(args.log_format);
    match &args.command {
        Some(Command::Uninstall(u)) => uninstall(&args, u).await,
        Some(Command::Status(s)) => status(s).await,
        Some(Command::Serve) | None => run(args).await,
    }
}

async fn uninstall(args: &Args, u: &UninstallArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    Uninstall {
        client,
        namespace: args.namespace.clone(),
        instance: args.instance.clone(),
        webhook_configuration: args.webhook_configuration.clone(),
        deployment: u.deployment.clone(),
        lease_name: args.lease_name.clone(),
        delete_secrets: u.delete_secrets.clone(),
        wait: Duration::from_secs(u.wait_seconds),
        seal_secret: args.seal_secret.clone(),
    }
    .run()
    .await
    .context("uninstall could not finish every drain")?;
    Ok(())
}

async fn status(s: &StatusArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let report = pod_graceful_drain::status::read(&client, s.pods_namespace.as_deref()).await?;
    match s.output {
        Output::Table => print!("{}", pod_graceful_drain::status::table(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// The serving certificate: from the Secret (kept there by us or by cert-manager) or from files.
async fn serving_cert(args: &Args, client: &kube::Client) -> anyhow::Result<Arc<ReloadingCert>> {
    let Some(secret) = &args.tls_secret else {
        let cert = ReloadingCert::load(&args.tls_cert_file, &args.tls_key_file)
            .context("loading the serving certificate")?;
        cert.clone().watch_files(
            args.tls_cert_file.clone(),
            args.tls_key_file.clone(),
            Duration::from_secs(2),
        );
        return Ok(cert);
    };
    let cert = ReloadingCert::empty();
    let keeper = CertSecret {
        client: client.clone(),
        namespace: args.namespace.clone(),
        name: secret.clone(),
        manage: args.tls_manage.then(|| Manage {
            want: Want {
                dns_names: args.dns_names(),
                ca_seconds: args.ca_seconds,
                serving_seconds: args.cert_seconds,
            },
            webhook_configuration: args.webhook_configuration.clone(),
        }),
        cert: cert.clone(),
    };
    keeper.first_certificate().await;
    keeper.spawn();
    Ok(cert)
}

/// The seal keys: not ready (no drain can be started or judged) until they are read.
async fn seal_keys(args: &Args, client: &kube::Client) -> SealKeys {
    let keys = SealKeys::default();
    let max = Duration::from_secs(args.drain_max_seconds);
    let keeper = KeyKeeper {
        client: client.clone(),
        namespace: args.namespace.clone(),
        name: args.seal_secret.clone(),
        keys: keys.clone(),
        rotate_every: Duration::from_secs(args.seal_rotation_seconds),
        // Longer than any drain sealed before a rotation can still be running.
        keep_superseded: 2 * max + Duration::from_secs(args.endpoint_wait_max_seconds + 3600),
        adopt_unsealed: Duration::from_secs(args.seal_adopt_unsealed_seconds),
        lease_name: args.lease_name.clone(),
    };
    keeper.first_keys().await;
    keeper.spawn();
    keys
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ready = Readiness::default();
    let metrics = Metrics::new();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let health = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding the health port {}", args.health_addr))?;
    let health = tokio::spawn(server::serve_health(
        health,
        ready.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let cert = serving_cert(&args, &client).await?;
    let served = cert.clone();
    metrics.watch_certificate(move || served.not_after());
    let tls = ServerTls::new(
        cert,
        ClientAuthConfig {
            mode: args.client_auth,
            ca_file: args.client_ca_file.clone(),
            allowed: args.allowed_clients(),
        },
    )
    .context("setting up TLS for the webhook port")?;
    tls.clone().watch(Duration::from_secs(5));

    let keys = seal_keys(&args, &client).await;
    let clock = Clock::new(
        jiff::SignedDuration::from_secs(args.clock_offset_for_tests_seconds),
        Duration::from_secs(args.max_clock_skew_seconds),
    );
    // Not ready (no delete-at is written) before the offset from the API server is known.
    k8s::until_ok(
        "could not measure the clock offset yet",
        Duration::from_secs(5),
        || clock.sample(&client),
    )
    .await;
    clock.clone().spawn(client.clone());
    let view = ClusterView::start(client.clone());
    let events = Events::new(client.clone(), &args.identity);
    let policy = args.policy();
    let admission = Arc::new(Admission {
        policy,
        held: Arc::new(tokio::sync::Semaphore::new(admission::MAX_HELD)),
        held_over_cap: Default::default(),
        view: view.clone(),
        events: events.clone(),
        instance: args.instance.clone(),
        keys: keys.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
    });
    let (leadership, election) = Election {
        namespace: args.namespace.clone(),
        lease_name: args.lease_name.clone(),
        identity: args.identity.clone(),
        ttl: Duration::from_secs(args.lease_seconds),
        clock: clock.clone(),
        metrics: metrics.clone(),
    }
    .start(client.clone(), shutdown.clone());
    let leading = leadership.clone();
    metrics.watch_leadership(move || leading.is_leading());
    let deleter = Deleter {
        client: client.clone(),
        leadership,
        events,
        policy: args.policy(),
        endpoint_wait_max: Duration::from_secs(args.endpoint_wait_max_seconds),
        instance: args.instance.clone(),
        keys,
        view: view.clone(),
        clock,
        metrics: metrics.clone(),
    };
    let deleter = tokio::spawn(deleter.run(shutdown.clone()));

    let refusals = Arc::new(server::Refusals::default());
    let counted = refusals.clone();
    metrics.watch_refusals(move || counted.snapshot().to_vec());
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("binding the webhook port {}", args.webhook_addr))?;
    // Stops accepting when `stop_serving` turns true, then lets held requests finish.
    let (stop_serving_tx, stop_serving) = watch::channel(false);
    let server = tokio::spawn(server::serve_webhook(
        listener,
        tls,
        server::webhook_router(admission),
        refusals,
        stop_serving,
        Duration::from_secs(args.hold_seconds + 5),
    ));
    view.ready().await;
    ready.set(true);
    tracing::info!(addr = %args.webhook_addr, identity = %args.identity, client_auth = ?args.client_auth, "serving admission reviews");

    shutdown_signal().await;
    // Stop being ready at once, keep answering while our own endpoints drain, then stop accepting
    // and let held requests finish.
    ready.set(false);
    tracing::info!(
        grace_s = args.shutdown_grace_seconds,
        "SIGTERM: draining our own endpoints"
    );
    tokio::time::sleep(Duration::from_secs(args.shutdown_grace_seconds)).await;
    let _ = stop_serving_tx.send(true);
    let _ = server.await;
    let _ = shutdown_tx.send(true);
    let _ = deleter.await;
    // The election task releases the Lease on its way out.
    let _ = election.await;
    let _ = health.await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
