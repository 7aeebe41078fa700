//! Generates the control-plane stream's (and workload-certificate service's) Rust code (messages, gRPC client and server) from
//! `proto/`. protoc is the one named by `PROTOC` when set (the convention prost-build follows),
//! else the one `protoc-bin-vendored` ships: a build needs no system protobuf compiler. The
//! vendored Linux binaries are statically linked, so they run on musl (the Dockerfile's alpine
//! build stage) as well as glibc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Ordered maps encode in a stable order, so a resource's bytes (and the version hashed from
    // them) depend only on its content.
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "../../proto/skein/discovery/v1alpha1/discovery.proto",
                "../../proto/skein/config/v1alpha1/config.proto",
                "../../proto/skein/identity/v1alpha1/identity.proto",
                "../../proto/skein/tap/v1alpha1/tap.proto",
                // Messages only: the proxies' span export (OTLP/HTTP protobuf).
                "../../proto/skein/otlp/v1/trace.proto",
            ],
            &["../../proto"],
        )?;
    Ok(())
}
