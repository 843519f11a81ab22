//! pgd-loadtest: the measurements behind pod-graceful-drain's claims, on the project's testbed.
//! `proof` runs the failed-requests comparison; the other subcommands measure what the webhook
//! costs. Figures are printed and written under `--out`; nothing here is a timed unit test.

mod cost;
mod due;
mod failover;
mod flood;
mod kwok;
mod lag;
mod load;
mod observe;
mod plot;
mod podstats;
mod proof;
mod report;
mod scale;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::proof::{Mode, ProofConfig, Scenario, Webhook};

#[derive(Parser)]
#[command(
    name = "pgd-loadtest",
    about = "Proof and cost benchmarks of pod-graceful-drain"
)]
struct Cli {
    /// Where results go.
    #[arg(long, default_value = "loadtest/results", global = true)]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Failed requests during rollouts, scale-downs and node drains behind a lagging load
    /// balancer, without mitigation, with preStop sleep and with a webhook.
    Proof {
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["rollout", "scale-down", "node-drain"])]
        scenarios: Vec<Scenario>,
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["none", "prestop-sleep", "webhook"])]
        modes: Vec<Mode>,
        /// Seconds the load balancer lags (kube-proxy paused).
        #[arg(long, default_value_t = 10)]
        lag: u64,
        /// preStop sleep and drain length = lag + margin.
        #[arg(long, default_value_t = 5)]
        margin: u64,
        #[arg(long, default_value_t = 4)]
        replicas: i32,
        /// Concurrent clients; each sends at most one request per --pace-ms.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 50)]
        pace_ms: u64,
        /// Seconds of load before the scenario starts.
        #[arg(long, default_value_t = 5)]
        baseline: u64,
        /// Runs of each scenario and mode (interleaved: every mode once, then again).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Instead of the chart: a command installing the webhook to measure (sh -c, inside the
        /// testbed network; PGD_LOADTEST_NAMESPACE and PGD_LOADTEST_DRAIN_SECONDS are set).
        #[arg(long, requires_all = ["webhook_uninstall", "webhook_name"])]
        webhook_install: Option<String>,
        #[arg(long)]
        webhook_uninstall: Option<String>,
        #[arg(long)]
        webhook_name: Option<String>,
        /// Exit 1 unless the webhook failed no request wherever no mitigation failed some.
        #[arg(long)]
        assert: bool,
    },
    /// What the webhook costs: review latency and throughput against one replica, CPU per
    /// request, and the API server's DELETE latency with and without it.
    Cost {
        /// Seconds of the throughput run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Sequential pass-through requests for the latency figures.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        #[arg(long, default_value_t = 200)]
        intercepts: usize,
        /// DELETEs (dry-run) of idle pods through the API server, with and without the webhook.
        #[arg(long, default_value_t = 500)]
        deletes: usize,
    },
    /// Replica memory and CPU with 10,000 pods on kwok's fake nodes and 2,000 Services.
    Scale {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 2_000)]
        services: usize,
        #[arg(long, default_value_t = 40)]
        nodes: usize,
    },
    /// Many pods due at once: 200 serving pods (kwok) among 2,000 selector-less Services with an
    /// EndpointSlice each, deleted through the API server together; how late each deletion is,
    /// and the product's API request rate (the API server's own count, through a FlowSchema).
    Due(due::DueConfig),
    /// Floods against one replica (clientAuth none, the worst case): 4 MiB bodies, slow-loris,
    /// idle connections, held forged DELETEs; its memory and restarts, and the API server's real
    /// reviews meanwhile.
    Flood {
        #[arg(long, value_enum, value_delimiter = ',', default_values = ["oversized", "slow-loris", "idle", "held"])]
        floods: Vec<flood::Flood>,
        /// Seconds of each flood.
        #[arg(long, default_value_t = 25)]
        seconds: u64,
        /// Concurrent connections POSTing 4 MiB bodies (half Content-Length, half chunked).
        #[arg(long, default_value_t = 256)]
        oversized_connections: usize,
        /// Slow-loris connections (the replica takes 1024)...
        #[arg(long, default_value_t = 2000)]
        loris_connections: usize,
        /// ... of which this many never finish the TLS handshake.
        #[arg(long, default_value_t = 400)]
        loris_stalled: usize,
        /// Connections that finish TLS and send nothing.
        #[arg(long, default_value_t = 2000)]
        idle_connections: usize,
        /// Concurrent forged DELETEs of a draining pod, each on its own connection.
        #[arg(long, default_value_t = 1000)]
        held_connections: usize,
        /// holdSeconds of the installation (the drain is twice as long).
        #[arg(long, default_value_t = 20)]
        hold_seconds: u64,
        /// Concurrent senders of real reviews (dry-run DELETEs through the API server).
        #[arg(long, default_value_t = 4)]
        reviewers: usize,
        /// Each reviewer sends at most one review per this many ms.
        #[arg(long, default_value_t = 100)]
        review_pace_ms: u64,
        /// Exit 1 unless, in every flood, the replica did not restart, its memory stayed below the
        /// limit and every real review succeeded within the webhook's timeout with the webhook's
        /// answer (none let through unreviewed by the API server, per its log).
        #[arg(long)]
        assert: bool,
    },
    /// Time from killing the leader to the next scheduled deletion carried out.
    Failover {
        /// Lease duration (the chart's default is 15 s).
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls_provider();
    let cli = Cli::parse();
    // Join the testbed's network before any thread exists: every runtime thread created after
    // this inherits it (setns is per thread), so every connection starts inside the testbed.
    pgd_harness::target()?.enter_network()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Proof {
            scenarios,
            modes,
            lag,
            margin,
            replicas,
            workers,
            pace_ms,
            baseline,
            repeat,
            webhook_install,
            webhook_uninstall,
            webhook_name,
            assert,
        } => {
            let webhook = match (webhook_install, webhook_uninstall, webhook_name) {
                (Some(install), Some(uninstall), Some(name)) => Webhook::Commands {
                    name,
                    install,
                    uninstall,
                },
                _ => Webhook::Chart,
            };
            let cfg = ProofConfig {
                lag: Duration::from_secs(lag),
                margin: Duration::from_secs(margin),
                replicas,
                workers,
                pace: Duration::from_millis(pace_ms),
                budget: Duration::from_secs(1),
                baseline: Duration::from_secs(baseline),
                tail: Duration::from_secs(3),
                webhook,
            };
            let mut results = Vec::new();
            let total = scenarios.len() * modes.len() * repeat;
            for scenario in &scenarios {
                for rep in 1..=repeat {
                    for mode in &modes {
                        eprintln!(
                            "=== run {} of {total}: {scenario}, {mode}, repetition {rep}",
                            results.len() + 1
                        );
                        results.push(proof::run_one(*scenario, *mode, rep, &cfg).await?);
                    }
                }
            }
            // Grouped by scenario then mode, whatever order they ran in.
            results.sort_by_key(|r| (r.scenario, r.mode, r.rep));
            report::write(&cli.out, &results, lag as f64, margin as f64)?;
            let mut plots = Vec::new();
            for scenario in &scenarios {
                // The plot shows the first repetition of each mode.
                let runs: Vec<&proof::RunResult> = results
                    .iter()
                    .filter(|r| r.scenario == *scenario && r.rep == 1)
                    .collect();
                plots.push(plot::scenario(&cli.out, &runs)?);
            }
            println!("{}", report::markdown(&results, lag as f64, margin as f64));
            for p in &plots {
                println!("plot: {}", p.display());
            }
            println!("figures: {}", cli.out.join("proof.json").display());
            let problems = report::verdict(&results);
            for p in &problems {
                println!("target missed: {p}");
            }
            let hard: Vec<&String> = problems
                .iter()
                .filter(|p| !p.contains("wall time"))
                .collect();
            if assert && !hard.is_empty() {
                anyhow::bail!("{} failure target(s) missed", hard.len());
            }
        }
        Command::Cost {
            seconds,
            requests,
            intercepts,
            deletes,
        } => {
            let report = cost::run(seconds, requests, intercepts, deletes).await?;
            std::fs::create_dir_all(&cli.out)?;
            std::fs::write(
                cli.out.join("cost.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            let md = cost::markdown(&report);
            std::fs::write(cli.out.join("cost.md"), &md)?;
            println!("{md}");
            println!("figures: {}", cli.out.join("cost.json").display());
        }
        Command::Scale {
            pods,
            services,
            nodes,
        } => {
            let report = scale::run(pods, services, nodes, &cli.out).await?;
            std::fs::create_dir_all(&cli.out)?;
            std::fs::write(
                cli.out.join("scale.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            println!(
                "{} pods ({} Running) on {} fake nodes and {} Services, created in {:.0} s:",
                report.pods,
                report.running,
                report.fake_nodes,
                report.services,
                report.create_seconds
            );
            for r in &report.replicas {
                println!(
                    "  {}: RSS {:.1} MiB before, {:.1} MiB after; {:.2} CPU seconds meanwhile",
                    r.pod, r.rss_before_mib, r.rss_after_mib, r.cpu_seconds_during
                );
            }
        }
        Command::Due(cfg) => {
            let report = due::run(&cfg, &cli.out).await?;
            std::fs::create_dir_all(&cli.out)?;
            std::fs::write(
                cli.out.join("due.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            let md = due::markdown(&report);
            std::fs::write(cli.out.join("due.md"), &md)?;
            let png = plot::due_lateness(&cli.out, &report)?;
            println!("{md}");
            println!("plot: {}", png.display());
            println!("figures: {}", cli.out.join("due.json").display());
            let problems = report.problems();
            for p in &problems {
                println!("product defect: {p}");
            }
            if !problems.is_empty() {
                anyhow::bail!("{} problem(s) with the deletions", problems.len());
            }
        }
        Command::Flood {
            floods,
            seconds,
            oversized_connections,
            loris_connections,
            loris_stalled,
            idle_connections,
            held_connections,
            hold_seconds,
            reviewers,
            review_pace_ms,
            assert,
        } => {
            let cfg = flood::FloodConfig {
                floods,
                seconds,
                oversized: oversized_connections,
                loris: loris_connections,
                loris_stalled,
                idle: idle_connections,
                held: held_connections,
                hold_seconds,
                reviewers,
                review_pace: Duration::from_millis(review_pace_ms),
            };
            let report = flood::run(&cfg).await?;
            std::fs::create_dir_all(&cli.out)?;
            std::fs::write(
                cli.out.join("flood.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            let md = flood::markdown(&report);
            std::fs::write(cli.out.join("flood.md"), &md)?;
            println!("{md}");
            println!("figures: {}", cli.out.join("flood.json").display());
            let problems = flood::verdict(&report);
            for p in &problems {
                println!("target missed: {p}");
            }
            if assert && !problems.is_empty() {
                anyhow::bail!("{} flood target(s) missed", problems.len());
            }
        }
        Command::Failover { lease_seconds } => {
            let report = failover::run(lease_seconds).await?;
            std::fs::create_dir_all(&cli.out)?;
            std::fs::write(
                cli.out.join("failover.json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            println!(
                "leader killed (grace 0) with a {} s Lease: next deletion carried out {:.1} s after the kill, {:.1} s after its delete-at (the one before the kill: {:.1} s after)",
                report.lease_seconds, report.after_kill_s, report.late_s, report.late_before_kill_s
            );
        }
    }
    Ok(())
}

/// A progress line on stderr, stamped with the time of day.
pub(crate) fn progress(msg: &str) {
    eprintln!("[{}] {msg}", jiff::Zoned::now().strftime("%H:%M:%S"));
}

/// kube's rustls client needs a process-wide crypto provider.
fn rustls_provider() -> Result<(), std::sync::Arc<rustls::crypto::CryptoProvider>> {
    rustls::crypto::ring::default_provider().install_default()
}
