//! Generates the gRPC contract from proto/. protoc comes from $PROTOC when set, else from
//! PATH (Debian's protobuf-compiler, installed by scripts/setup-debian.sh).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protos = [
        "proto/siderite/agent/v1/agent.proto",
        "proto/siderite/admin/v1/admin.proto",
    ];
    let mut config = prost_build::Config::new();
    // Every message knows its full name, so the strict codec can find its descriptor.
    config.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out.join("siderite_descriptor.bin"))
        .btree_map(".")
        .message_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default, rename_all = \"camelCase\")]")
        .enum_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .enum_attribute(".", "#[serde(rename_all = \"camelCase\")]")
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
