//! The API's .proto as other toolchains see it: protoc (Debian's) compiles it, and no rpc,
//! message or enum shares a name with another (protoc refuses that; protox, ours, did not).

use std::path::Path;

fn proto_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

#[test]
fn protoc_compiles_the_proto() {
    let out = tempfile::tempdir().unwrap();
    let r = std::process::Command::new("protoc")
        .arg(format!("-I{}", proto_dir().display()))
        .arg(format!(
            "--descriptor_set_out={}",
            out.path().join("d.pb").display()
        ))
        .arg(format!("--python_out={}", out.path().display()))
        .arg("nodeswitch.proto")
        .output();
    match r {
        Ok(o) => assert!(
            o.status.success(),
            "protoc refuses nodeswitch.proto: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs protoc (scripts/install-deps): {e}"
            );
            eprintln!("note: no protoc ({e}); skipping");
        }
    }
}

#[test]
fn every_rpc_message_and_enum_name_is_unique() {
    let text = std::fs::read_to_string(proto_dir().join("nodeswitch.proto")).unwrap();
    let mut names = std::collections::HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [kind @ ("rpc" | "message" | "enum" | "service"), name, ..] = words[..] {
            let name = name.split(['(', '{']).next().unwrap_or(name);
            if let Some(prev) = names.insert(name.to_string(), kind) {
                panic!("{kind} {name} has the name of a {prev}");
            }
        }
    }
    assert!(names.len() > 40, "{} names found", names.len());
}
