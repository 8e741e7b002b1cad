//! `nodeswitch-cni`: the CNI plugin (install as `/opt/cni/bin/nodeswitch`). Reads the
//! `CNI_*` environment and the network config on stdin, prints the result or the spec's
//! error object on stdout; exit status 0 or 1. See `docs/cni.md`.

use control::cni::config::MAX_CONFIG;
use control::cni::plugin;
use control::cni::spec::{Env, NEWEST};
use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = Env::from_lookup(|k| std::env::var(k).ok());
    // VERSION may come with nothing on stdin; every other command reads its config.
    if env
        .as_ref()
        .map_or(true, |e| e.command != control::cni::spec::Command::Version)
    {
        let _ = std::io::stdin()
            .take(MAX_CONFIG as u64 + 1)
            .read_to_end(&mut stdin);
    }
    let outcome = env.and_then(|e| plugin::run(&e, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(mut e) => {
            // The error speaks the config's version when there is one.
            e.cni_version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(|x| x.as_str())
                        .map(String::from)
                })
                .filter(|v| control::cni::spec::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| NEWEST.to_string());
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&e).unwrap_or_else(|_| "{}".into())
            );
            ExitCode::FAILURE
        }
    }
}
