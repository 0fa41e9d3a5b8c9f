//! A small swarm in CI, so the benchmark's code keeps working: 200 real agents
//! connect, run `hostname` together (once with a paused live reader), the
//! bastion restarts, and all come back without giving up.

use std::time::Duration;

use postern_tests::swarm::{SwarmOpts, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_connects_and_survives_a_restart() {
    let r = run(&SwarmOpts {
        agents: 200,
        enroll_concurrency: 16,
        restart: true,
        backoff_cap: Duration::from_secs(3),
        fanout: vec![200],
        fanout_runs: 1,
        live: true,
        idle: Duration::ZERO,
    })
    .await;
    assert_eq!(r.agents_gave_up, 0);
    assert!(r.restart_reconnect_secs.is_some());
    assert_eq!(r.fanout.len(), 1, "the fan-out ran on all 200 nodes");
    assert_eq!(
        r.fanout[0].failed_nodes, 0,
        "{:?}",
        r.fanout[0].example_error
    );
    // A paused live reader of the whole fan-out gets every event in the end.
    let live = r.live.unwrap();
    assert_eq!(live.events, live.events_expected, "{live:?}");
}
