//! Compiles `proto/` into Rust with a vendored `protoc`, so a build needs no system packages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let files = [
        "proto/thanos/labels.proto",
        "proto/thanos/prompb.proto",
        "proto/thanos/store.proto",
        "proto/thanos/info.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&files, &["proto".into(), include])?;
    Ok(())
}
