//! Compiles the `unefois.v1` .proto files in pure Rust (protox, no system `protoc`), generates the
//! prost messages and tonic clients and servers, and writes the encoded FileDescriptorSet to
//! `$OUT_DIR/unefois_descriptor.bin` for server reflection.

use std::error::Error;
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = root.join("unefois").join("v1");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files = Vec::new();
    for entry in std::fs::read_dir(&proto_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();

    let fds = protox::compile(&files, [root.as_path()])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("unefois_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
