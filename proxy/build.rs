//! Points `KAZE_DATAPLANE_OBJECT` at the eBPF object built by `cargo xtask build-ebpf`, so the
//! proxy embeds it. When it has not been built, an empty stand-in is embedded instead and
//! `Dataplane::load` says so at run time: the rest of the workspace must still compile for
//! engineers who never touch the dataplane.

use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let object =
        manifest.join("../dataplane-ebpf/target/bpfel-unknown-none/release/dataplane-ebpf");
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = if object.is_file() {
        object
    } else {
        println!(
            "cargo:warning=dataplane-ebpf object not built ({}); run `cargo xtask build-ebpf`",
            object.display()
        );
        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets this"));
        let empty = out.join("dataplane-ebpf.missing");
        std::fs::write(&empty, b"").expect("writing the empty stand-in object");
        empty
    };
    println!(
        "cargo:rustc-env=KAZE_DATAPLANE_OBJECT={}",
        embedded.display()
    );
}
