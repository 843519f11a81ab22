//! A slow load balancer, for real: kube-proxy (the testbed's "load balancer") is paused with
//! SIGSTOP, so its rules keep sending traffic to the endpoints it last knew, exactly as a cloud
//! load balancer does until it deregisters a target; SIGCONT lets it catch up. The pause always
//! ends, also when the run fails (the guard resumes on drop).

use std::path::Path;
use std::time::{Duration, Instant};

const PIDS: &str = "/run/pgd-testbed/pids";

fn signal(pid: i32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// The kube-proxy of every testbed node, checked to be kube-proxy.
pub fn kube_proxies() -> anyhow::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(PIDS)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("kube-proxy") {
            continue;
        }
        let pid: i32 = std::fs::read_to_string(entry.path())?.trim().parse()?;
        let cmdline = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
            .unwrap_or_default();
        anyhow::ensure!(
            String::from_utf8_lossy(&cmdline).contains("kube-proxy"),
            "pid {pid} of {name} is not kube-proxy"
        );
        pids.push(pid);
    }
    anyhow::ensure!(
        !pids.is_empty(),
        "no kube-proxy pid under {PIDS}: is the testbed up?"
    );
    Ok(pids)
}

/// kube-proxy paused; resumed by `resume` or on drop.
pub struct Paused {
    pids: Vec<i32>,
    pub since: Instant,
    resumed: Option<Instant>,
}

impl Paused {
    pub fn start() -> anyhow::Result<Paused> {
        let pids = kube_proxies()?;
        let since = Instant::now();
        for &p in &pids {
            signal(p, "STOP")?;
        }
        Ok(Paused {
            pids,
            since,
            resumed: None,
        })
    }

    /// Resumes; returns how long the load balancer lagged.
    pub fn resume(&mut self) -> Duration {
        if self.resumed.is_none() {
            for &p in &self.pids {
                if let Err(e) = signal(p, "CONT") {
                    eprintln!("could not resume kube-proxy {p}: {e}");
                }
            }
            self.resumed = Some(Instant::now());
        }
        self.resumed.unwrap_or_else(Instant::now) - self.since
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}
