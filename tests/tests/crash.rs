//! kill -9 of the server while agents register: after a restart on the same data
//! directory, every registration the server acknowledged is there, whole.
use std::sync::Arc;
use std::time::Duration;

use siderite_server::fake;
use siderite_tests::{list_servers, register, ServerProcess};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_registration_storm_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]).await.unwrap();
    let addr = server.addr.clone();
    let acked: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seed = 0xc7;

    // 8 workers register machines back to back until the server dies under them.
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (addr, acked) = (addr.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            for n in 0..10_000u32 {
                let i = w * 10_000 + n;
                match register(&addr, &format!("boot-{i}"), fake::hardware(seed, i)).await {
                    Ok(r) => acked.lock().await.push((r.server_id, i)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number are acknowledged, mid-storm.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().await.len() >= 300 {
            break;
        }
    }
    server.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 300);

    let server = ServerProcess::start(&data, &[]).await.unwrap();
    let stored = list_servers(&server.addr).await.unwrap();
    let by_id: std::collections::HashMap<_, _> = stored
        .iter()
        .map(|s| (s.metadata.clone().unwrap().name, s.status.clone().unwrap()))
        .collect();
    for (id, i) in &acked {
        let st = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged server {id} lost"));
        assert_eq!(
            st.hardware.as_ref(),
            Some(&fake::hardware(seed, *i)),
            "server {id} stored whole"
        );
    }
    // Anything stored beyond the acknowledged ones was committed but its reply was lost
    // in the kill; it must be whole too.
    assert!(stored.len() >= acked.len());
    for s in &stored {
        assert!(s
            .status
            .as_ref()
            .and_then(|st| st.hardware.as_ref())
            .is_some());
    }
    println!("acknowledged {}, stored {}", acked.len(), stored.len());
}
