//! Messages on the agent channel, both ways: what the bastion reads from an
//! agent and what an agent reads from the bastion. Nothing panics, and what
//! parses survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::{agent, cmdexec, ssh};

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
            .expect("what was read reads again");
        assert_eq!(v, again);
    }
}

fn parses<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 9 {
        // Bastion → agent.
        0 => parses::<cmdexec::AgentExec>(rest),
        1 => parses::<ssh::GrantPush>(rest),
        2 => parses::<agent::InstallCert>(rest),
        // Agent → bastion.
        3 => {
            round_trip::<cmdexec::AgentExecResult>(rest);
            if let Ok(r) = serde_json::from_slice::<cmdexec::AgentExecResult>(rest) {
                let n = serde_json::to_vec(&r).expect("serializes").len();
                let kept = r.stdout.data.len().max(r.stderr.data.len());
                if kept <= cmdexec::MAX_KEEP_BYTES
                    && r.exec_id.len() <= 64
                    && r.error.as_ref().is_none_or(|e| e.len() <= cmdexec::MAX_ERROR_TEXT)
                    && r.stdout.sha256.len() <= 64
                    && r.stderr.sha256.len() <= 64
                {
                    assert!(n <= cmdexec::max_result_answer(kept), "{n} bytes");
                }
            }
        }
        4 => parses::<agent::Health>(rest),
        5 => parses::<agent::CsrResponse>(rest),
        6 => parses::<ssh::GrantPushed>(rest),
        // Enrollment, both ways.
        7 => parses::<agent::EnrollRequest>(rest),
        _ => {
            parses::<agent::EnrollResponse>(rest);
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = agent::parse_ca_hash(s);
            }
        }
    }
});
