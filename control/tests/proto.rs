//! The API's .proto as other toolchains see it: protoc (Debian's) compiles it, no rpc,
//! message or enum shares a name with another (protoc refuses that; protox, ours, did not),
//! and every rpc has a request and a response message of its own, named for it (buf lint's
//! rules: each can then grow without touching another rpc).

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
        .arg("nodeswitch/v1/nodeswitch.proto")
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
    let text = std::fs::read_to_string(proto_dir().join("nodeswitch/v1/nodeswitch.proto")).unwrap();
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

#[test]
fn every_rpc_has_its_own_request_and_response() {
    let text = std::fs::read_to_string(proto_dir().join("nodeswitch/v1/nodeswitch.proto")).unwrap();
    let mut used = std::collections::HashSet::new();
    let mut rpcs = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("rpc "))
    {
        let name = line[4..].split('(').next().unwrap().trim();
        let types: Vec<&str> = line
            .split(['(', ')'])
            .skip(1)
            .step_by(2)
            .map(|t| t.trim().trim_start_matches("stream ").trim())
            .collect();
        assert_eq!(
            types,
            [format!("{name}Request"), format!("{name}Response")],
            "{line}"
        );
        for t in types {
            assert!(used.insert(t.to_string()), "{t} serves two rpcs");
        }
        rpcs += 1;
    }
    assert!(rpcs >= 19, "{rpcs} rpcs");
    assert!(
        text.contains("service SwitchService {"),
        "the service's name ends in Service"
    );
}
