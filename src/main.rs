//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them. The admission webhook and the deleter arrive with the product issue; for now the binary
//! only identifies itself, so the image and chart plumbing have something real to run.

fn main() {
    println!("pod-graceful-drain {}", env!("CARGO_PKG_VERSION"));
}
