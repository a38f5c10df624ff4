//! Compiles the protos with `protox` (a protobuf compiler written in Rust), so that a fresh
//! machine builds without `protoc` installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "weft/discovery/v1/discovery.proto",
        "weft/identity/v1/identity.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
