//! The guides as a reader meets them: every shell block in README.md and docs/
//! is valid bash (`bash -n`), so a command copied from them at least parses, and
//! the README stays a front page. Links and pages are checked by the docs build
//! itself (`scripts/docs`, MkDocs in strict mode, run by the test script).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The ```sh blocks of a Markdown text, with the line each starts on.
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```sh" || line.trim_start() == "```bash" => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_shell_block_in_the_guides_parses() {
    let files = markdown_files();
    assert!(files.len() > 10, "the guides were not found: {files:?}");
    let mut checked = 0;
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, block) in shell_blocks(&text) {
            checked += 1;
            let mut child = Command::new("bash")
                .arg("-n")
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), block.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                bad.push(format!(
                    "{}:{line}: {}",
                    f.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(checked > 20, "only {checked} shell blocks found");
    assert!(
        bad.is_empty(),
        "shell blocks that do not parse:\n{}",
        bad.join("\n")
    );
}

/// The README is the front page: the two commands first, the tour, and links;
/// the rest lives in docs/.
#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; move detail into docs/"
    );
    let first_block = shell_blocks(&readme).into_iter().next().unwrap().1;
    assert!(
        first_block.contains("postern-bastion -- dev"),
        "{first_block}"
    );
    assert!(first_block.contains("./scripts/test"), "{first_block}");
    // Every guide is linked from the front page or the docs index.
    let index = std::fs::read_to_string(root().join("docs/index.md")).unwrap();
    for f in markdown_files()
        .iter()
        .filter(|f| f.starts_with(root().join("docs")))
    {
        let rel = f
            .strip_prefix(root().join("docs"))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if rel == "index.md" {
            continue;
        }
        assert!(
            index.contains(&format!("({rel})")) || readme.contains(&format!("(docs/{rel})")),
            "docs/{rel} is linked from neither README.md nor docs/index.md"
        );
    }
}
