//! A recording's output as stored: characters cut between two packets come
//! out whole, invalid bytes as U+FFFD, and the cast is what `asciinema` reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use postern_api::recordings::RecordingLevel;
use postern_bastion::recording::{Meta, Recorder, decompress};

#[tokio::test]
async fn output_cut_inside_characters_is_stored_whole() {
    let t = common::sqlite().await;
    let tasks = tokio_util::task::TaskTracker::new();
    let recorder = Recorder::new(t.store.clone(), "r".into(), tasks.clone(), 1 << 20);
    let meta = Meta {
        org_id: "o".into(),
        project_id: "p".into(),
        node_id: "n".into(),
        hostname: "web-1".into(),
        user_id: "u".into(),
        user_name: "alice".into(),
        login: "root".into(),
        kind: "shell",
        command: String::new(),
        width: 80,
        height: 24,
        term: "xterm".into(),
        pod: None,
    };
    let tape = recorder
        .start(meta, RecordingLevel::Strict, Default::default())
        .await
        .unwrap();
    let id = tape.id.clone();
    let text = "é€😀 done\n".as_bytes();
    // Every split point, one byte at a time, then an invalid byte.
    for b in text {
        tape.output(std::slice::from_ref(b)).await;
    }
    tape.output(b"bad \xff end\n").await;
    let ended = tape.finish().await.unwrap();
    assert_eq!(ended.gaps, 0);
    let chunks = t.store.recording_chunks(&id, 0, 100, true).await.unwrap();
    let mut cast = Vec::new();
    for c in &chunks {
        cast.extend(decompress(c.data.as_deref().unwrap(), 1 << 20).unwrap());
    }
    let mut shown = String::new();
    for line in String::from_utf8(cast).unwrap().lines().skip(1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v[1] == "o" {
            shown.push_str(v[2].as_str().unwrap());
        }
    }
    assert_eq!(shown, "é€😀 done\nbad \u{fffd} end\n");
    tasks.close();
    t.cleanup().await;
}
