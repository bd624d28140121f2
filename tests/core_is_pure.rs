//! The pure core (crate `orderflow-core`: order, inventory, engine,
//! lifecycle, state) depends on no broker client, async runtime or HTTP
//! stack, directly or through another crate: the compiler then keeps the
//! decision logic free of them; so does the order store (`orderflow-store`).
//! `cargo tree` is asked what their normal dependencies really are.

use std::process::Command;

const FORBIDDEN: [&str; 6] = ["rdkafka", "tokio", "hyper", "http", "metrics", "futures"];

/// The names of `package`'s normal dependencies, itself included.
fn normal_dependencies(package: &str) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path", manifest])
        .args(["-p", package, "-e", "normal", "--prefix", "none"])
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn assert_pure(package: &str, also: &str) {
    let crates = normal_dependencies(package);
    assert!(
        crates.iter().any(|c| c == package) && crates.iter().any(|c| c == also),
        "not {package}'s tree: {crates:?}"
    );
    let found: Vec<&String> = crates
        .iter()
        .filter(|name| {
            FORBIDDEN
                .iter()
                .any(|f| **name == *f || name.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}: {crates:?}"
    );
}

#[test]
fn the_core_depends_on_no_broker_runtime_or_network_crate() {
    assert_pure("orderflow-core", "serde");
}

/// The order store (crate `orderflow-store`) is disk, never the broker.
#[test]
fn the_store_depends_on_no_broker_runtime_or_network_crate() {
    assert_pure("orderflow-store", "fjall");
}
