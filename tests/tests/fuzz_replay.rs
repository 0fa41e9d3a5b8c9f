//! Every fuzz target's inputs, replayed as ordinary tests on every run: the seeds
//! (`fuzz/seeds/<target>/`), any input cargo-fuzz kept after a crash, a timeout
//! or a leak (`fuzz/artifacts/<target>/`), and the corpus `scripts/fuzz` grew in
//! its cache (`$POSTERN_FUZZ_ROOT/corpus/<target>`, by default under
//! `/var/tmp/postern-fuzz`) when there is one.
//!
//! The bodies are the libFuzzer targets' own (`postern_tests::fuzz_bodies`), so
//! an input that made a target fail fails here too, in the normal build, without
//! cargo-fuzz or a fuzz build. Fuzzing for new inputs is `scripts/fuzz`'s job.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use postern_tests::fuzz_bodies;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `scripts/fuzz` keeps cargo-fuzz, its build and the corpus.
fn fuzz_root() -> PathBuf {
    std::env::var_os("POSTERN_FUZZ_ROOT")
        .map_or_else(|| PathBuf::from("/var/tmp/postern-fuzz"), PathBuf::from)
}

/// The files directly in `dir`, sorted; none when there is no such directory.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target`'s body on each of its inputs. Every input runs, also after one
/// failed, so a failure names all the inputs that fail (their panics are printed
/// above it).
fn replay(target: &str) {
    let body = fuzz_bodies::body(target)
        .unwrap_or_else(|| panic!("no body for fuzz target {target} in fuzz_bodies::TARGETS"));
    let seeds = files_in(&repo().join("fuzz/seeds").join(target));
    // A replay that silently checks nothing would pass for ever.
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seed");
    let artifacts = files_in(&repo().join("fuzz/artifacts").join(target));
    let corpus = files_in(&fuzz_root().join("corpus").join(target));
    let mut failed = Vec::new();
    for path in seeds.iter().chain(&artifacts).chain(&corpus) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    let total = seeds.len() + artifacts.len() + corpus.len();
    assert!(
        failed.is_empty(),
        "fuzz target {target}: {} of {total} inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!(
        "{target}: {} seeds, {} artifacts, {} corpus inputs",
        seeds.len(),
        artifacts.len(),
        corpus.len()
    );
}

/// One test per target, so they run side by side and each reports on its own.
macro_rules! replay_targets {
    ($($target:ident),* $(,)?) => {
        /// The targets this file has a test for.
        const REPLAYED: &[&str] = &[$(stringify!($target)),*];
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*
    };
}

replay_targets!(
    agent_channel,
    authorized_key,
    channel_framing,
    csr,
    identity,
    keys_helper,
    kube_annotation,
    kube_request,
    label_selector,
    output_capture,
    rest_bodies,
);

/// The file names (without `.rs`) in `fuzz/fuzz_targets/`, sorted.
fn fuzz_target_files() -> Vec<String> {
    let mut names: Vec<String> = files_in(&repo().join("fuzz/fuzz_targets"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A new fuzz target cannot go without its replay: every target file has a body
/// in `fuzz_bodies`, a test here and seeds, and calls that body, so the fuzzer and
/// this test check the same thing.
#[test]
fn every_fuzz_target_is_replayed() {
    let files = fuzz_target_files();
    assert!(
        !files.is_empty(),
        "no fuzz targets under fuzz/fuzz_targets/"
    );
    let mut bodies: Vec<&str> = fuzz_bodies::TARGETS.iter().map(|(n, _)| *n).collect();
    bodies.sort_unstable();
    let mut replayed = REPLAYED.to_vec();
    replayed.sort_unstable();
    assert_eq!(
        files, bodies,
        "fuzz/fuzz_targets/*.rs against fuzz_bodies::TARGETS"
    );
    assert_eq!(
        files, replayed,
        "fuzz/fuzz_targets/*.rs against the tests in this file"
    );
    for name in &files {
        let path = repo().join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&path).expect("a fuzz target's source");
        assert!(
            text.contains(&format!("fuzz_bodies::{name}(")),
            "{} does not call fuzz_bodies::{name}",
            path.display()
        );
    }
}
