//! Slow-loris and flood on loopback against a `siderite serve` process with its default
//! limits: every legitimate agent still registers and gets its session while the attack
//! runs, the attack registers nothing, and the limits are what closed the attackers'
//! connections. Bounded: ~100 agents per phase, a few hundred attacking connections, a
//! handful of seconds. The figures (p99 with and without) come from `siderite bench
//! flood`; this prints them too.
use siderite_server::flood::{run, FloodConfig};
use siderite_tests::workspace_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legitimate_agents_register_through_a_slow_loris_and_a_flood() {
    let report = run(
        workspace_bin("siderite"),
        FloodConfig {
            agents: 100,
            concurrency: 8,
            loris_sources: 4,
            // More than the per-source limit (64): the rest are refused at once.
            loris_per_source: 80,
            flood_sources: 4,
            flood_loops: 2,
            // The default limits (64 connections and 8 sessions per source), but a 1 s
            // handshake deadline so that it acts within the test's few seconds.
            serve_args: vec!["--tls-handshake-timeout".into(), "1".into()],
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.before.failed, 0, "{report}");
    assert_eq!(report.during.failed, 0, "{report}");
    assert_eq!(report.during.ok, 100, "{report}");
    assert_eq!(
        report.attack_created(),
        0,
        "the attack registered servers: {report}"
    );
    assert_eq!(report.flood_accepted, 0, "{report}");
    assert!(report.flood_requests > 0, "the flood never ran: {report}");
    assert!(
        report.loris_opened >= 4 * 64,
        "slow-loris did not get its connections: {report}"
    );
    assert!(
        report.loris_closed_fast > 0,
        "no slow-loris connection was refused by the per-source limit: {report}"
    );
    assert!(
        report.loris_closed_late > 0,
        "no slow-loris connection was dropped at the handshake deadline: {report}"
    );
}
