//! The bastion's shape, read from its `crate::…` paths, so it stays true: a core
//! that knows no door, doors that meet only through the core (the access bus,
//! the fleet), never each other, and no circle of imports across the
//! folders. Only the composition (`app.rs`, the commands, `lib.rs`, `main.rs`)
//! names doors.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The doors: each is built in `app.rs` from the core plus its own state.
const DOORS: &[&str] = &["http", "ssh", "kube", "agent_port", "peer_port"];
/// What composes the doors and may name them all: the server (`app.rs`), the
/// `dev` and `init` commands (`dev/`, `tenancy_init.rs`, which mint tokens as
/// the REST door does), and the crate's root and binary.
const COMPOSITION: &[&str] = &["app", "dev", "tenancy_init", "lib", "main"];

/// Which top-level modules each top-level module of `bastion/src` names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap();
            let unit = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != unit {
                    edges.entry(unit.clone()).or_default().insert(name);
                }
            }
            // `super::…` cannot leave a top-level module; `use crate::{a, b}` is
            // not used in this crate (each path is named whole), checked here.
            assert!(
                !text.contains("crate::{"),
                "{}: name each crate path whole (crate::a::…), so this test reads it",
                rel.display()
            );
        }
    }
    edges
}

#[test]
fn the_core_knows_no_door_and_doors_do_not_call_each_other() {
    let edges = imports();
    assert!(edges.len() > 10, "the sources were not found: {edges:?}");
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        if COMPOSITION.contains(&from.as_str()) {
            continue;
        }
        for to in tos.iter().filter(|t| DOORS.contains(&t.as_str())) {
            wrong.push(format!("{from} -> {to}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "only app.rs and dev/ may name a door; a door reaches another through the core's \
         access bus or fleet: {wrong:?}"
    );
}

/// The folders of the bastion import one another in one direction: a circle
/// (A names B, which names A, through however many others) would make every
/// one of them depend on all the others. Reported as the circle it is.
#[test]
fn no_circle_of_imports_across_the_folders() {
    let edges = imports();
    // Depth-first search for a back edge, from every module in turn.
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut circle = path[i..].to_vec();
            circle.push(at.to_string());
            return Some(circle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(circle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "the bastion's folders import one another in a circle: {}",
                circle.join(" -> ")
            );
        }
    }
}
