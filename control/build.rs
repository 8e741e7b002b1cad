//! Compiles `proto/nodeswitch/v1/nodeswitch.proto` with protox (pure Rust: no system `protoc`
//! needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/nodeswitch/v1/nodeswitch.proto");
    let fds = protox::compile(["proto/nodeswitch/v1/nodeswitch.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
