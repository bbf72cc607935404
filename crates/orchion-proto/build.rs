//! Compiles `proto/` with protox (a protobuf compiler in Rust), so no system `protoc` and no
//! network are needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["orchion/v1/node.proto", "orchion/v1/work.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
