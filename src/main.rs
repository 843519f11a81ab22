//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them. The decision logic, its inputs and the AdmissionReview edge live in the library; the
//! server, the leader's deleter and their wiring are still to come (issue 4), so for now the binary
//! validates its configuration, prints the policy it would apply and exits.

use clap::Parser;
use pod_graceful_drain::config::Args;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("pod-graceful-drain: invalid configuration: {e}");
        return std::process::ExitCode::from(2);
    }
    println!("pod-graceful-drain {}", env!("CARGO_PKG_VERSION"));
    println!("{:#?}", args.policy());
    eprintln!("pod-graceful-drain: the admission server is not implemented yet; exiting");
    std::process::ExitCode::SUCCESS
}
