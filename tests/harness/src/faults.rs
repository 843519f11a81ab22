//! Faults injected into the testbed's real network, each undone when its guard drops.
//!
//! The kernel here has no `netem` qdisc, so a slow link is made the way a congested one is: an HTB
//! class with a tiny rate on the pod's `eth0`, and a u32 filter that sends only the pod's packets
//! to the API server (destination port 443, the `kubernetes` Service, or 6443) through it. Every
//! request the pod makes to the API, and every ACK it returns while reading an answer, waits its
//! turn on that class; the webhook's own answers to the API server (from the webhook port, to the
//! API server's ephemeral port) go through the fast default class untouched.

use std::path::PathBuf;
use std::process::Command;

use crate::error::{Error, Result};

/// The network namespace that holds `ip` on one of its interfaces (a pod's, found through any
/// process running in it).
pub fn netns_of_ip(ip: &str) -> Result<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    let needle = format!("inet {ip}/");
    for entry in std::fs::read_dir("/proc").map_err(|e| Error::Unexpected(format!("/proc: {e}")))? {
        let Ok(entry) = entry else { continue };
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let ns = entry.path().join("ns/net");
        let Ok(target) = std::fs::read_link(&ns) else {
            continue;
        };
        if !seen.insert(target) {
            continue;
        }
        let Ok(out) = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["--", "ip", "-4", "-o", "addr", "show"])
            .output()
        else {
            continue;
        };
        if String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return Ok(ns);
        }
    }
    Err(Error::Unexpected(format!(
        "no network namespace holds the address {ip}"
    )))
}

/// The pod's traffic to the API server slowed to `kbit` kilobits per second while this lives.
pub struct SlowApi {
    netns: PathBuf,
}

impl SlowApi {
    pub fn new(pod_ip: &str, kbit: u32) -> Result<SlowApi> {
        let netns = netns_of_ip(pod_ip)?;
        let slow = SlowApi { netns };
        let rate = format!("{kbit}kbit");
        slow.tc(&[
            "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10",
        ])?;
        slow.tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate",
            "10gbit",
        ])?;
        slow.tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:20", "htb", "rate", &rate,
            "ceil", &rate,
        ])?;
        for port in ["443", "6443"] {
            slow.tc(&[
                "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "u32", "match",
                "ip", "dport", port, "0xffff", "flowid", "1:20",
            ])?;
        }
        Ok(slow)
    }

    fn tc(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg("tc")
            .args(args)
            .output()
            .map_err(|e| Error::Unexpected(format!("tc {}: {e}", args.join(" "))))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Unexpected(format!(
                "tc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

impl Drop for SlowApi {
    fn drop(&mut self) {
        let _ = self.tc(&["qdisc", "del", "dev", "eth0", "root"]);
    }
}
