//! CPU time and resident memory of a pod's processes, read from the testbed's cgroups (v1, the
//! kubelet's cgroupfs layout under each node's root: `<controller>/pgd-n<N>/kubepods/...`).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The pod's cgroup directory under `controller`.
fn pod_dir(controller: &str, uid: &str) -> anyhow::Result<PathBuf> {
    let want = format!("pod{uid}");
    let base = Path::new(ROOT).join(controller);
    for node in std::fs::read_dir(&base)?.flatten() {
        let kubepods = node.path().join("kubepods");
        for candidate in [
            kubepods.join(&want),
            kubepods.join("burstable").join(&want),
            kubepods.join("besteffort").join(&want),
        ] {
            if candidate.is_dir() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!("no {controller} cgroup for pod {uid}")
}

/// CPU seconds the pod has used so far.
pub fn cpu_seconds(uid: &str) -> anyhow::Result<f64> {
    let usage = std::fs::read_to_string(pod_dir("cpuacct", uid)?.join("cpuacct.usage"))?;
    Ok(usage.trim().parse::<f64>()? / 1e9)
}

fn pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(pids(&e.path()));
        }
    }
    out
}

/// Resident memory (VmRSS) of the pod's processes named `comm` (the kernel's 15-character name).
pub fn rss_bytes(uid: &str, comm: &str) -> anyhow::Result<u64> {
    let dir = pod_dir("memory", uid)?;
    let mut total = 0;
    let mut found = false;
    for pid in pids(&dir) {
        let proc = Path::new("/proc").join(pid.to_string());
        let name = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
        if !comm.starts_with(name.trim()) || name.trim().is_empty() {
            continue;
        }
        let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += kb * 1024;
            found = true;
        }
    }
    anyhow::ensure!(found, "no process {comm} in pod {uid}");
    Ok(total)
}

/// What the pod's memory cgroup charges now and its peak since the pod started, in bytes: RSS,
/// page cache and kernel memory (socket buffers, ...), the figure the memory limit is enforced on.
pub fn cgroup_memory(uid: &str) -> anyhow::Result<(u64, u64)> {
    let dir = pod_dir("memory", uid)?;
    let read = |file: &str| -> anyhow::Result<u64> {
        Ok(std::fs::read_to_string(dir.join(file))?.trim().parse()?)
    };
    Ok((
        read("memory.usage_in_bytes")?,
        read("memory.max_usage_in_bytes")?,
    ))
}
