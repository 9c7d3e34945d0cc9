//! Replays the fuzz corpora and every crash the fuzzer ever found (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same target functions the fuzzer runs
//! (`siderite_tests::fuzzing`), so `cargo test` keeps them fixed without cargo-fuzz.
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use siderite_tests::fuzzing::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let run = fuzzing::target(target).unwrap();
    let corpus = inputs("corpus", target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seeds");
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(file).unwrap();
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} panicked on: {failed:#?}");
}

#[test]
fn dhcp() {
    replay("dhcp");
}

#[test]
fn tftp() {
    replay("tftp");
}

#[test]
fn smbios() {
    replay("smbios");
}

#[test]
fn cmdline() {
    replay("cmdline");
}

#[test]
fn register() {
    replay("register");
}

/// Each target has its cargo-fuzz binary, and every directory under `corpus/` and
/// `regressions/` names a target (another would never be replayed).
#[test]
fn targets_and_directories_match() {
    for (name, _) in TARGETS {
        let bin = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(bin.is_file(), "{} is missing", bin.display());
    }
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                fuzzing::target(&name).is_some(),
                "fuzz/{kind}/{name} is not a fuzz target"
            );
        }
    }
}
