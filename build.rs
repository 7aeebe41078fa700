//! Generates the control-plane stream's Rust code (messages, gRPC client and server) from
//! `proto/`, with the protoc that `protoc-bin-vendored` ships: a build needs no system protobuf
//! compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Ordered maps encode in a stable order, so a resource's bytes (and the version hashed from
    // them) depend only on its content.
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "proto/skein/discovery/v1alpha1/discovery.proto",
                "proto/skein/config/v1alpha1/config.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
