//! Registration in-process: many agents at once, re-registration, identity rules, the
//! session, and hostile input that must change nothing.
use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use siderite::proto::admin::v1::{AcceptServerRequest, DeleteServerRequest};
use siderite::proto::agent::v1::{BlockDevice, Hardware, RegisterRequest, System};
use siderite_server::accept::AutoAccept;
use siderite_server::fake;
use siderite_tests::{list_servers, raw, register, InProcess};

fn by_name(
    servers: Vec<siderite::proto::admin::v1::Server>,
) -> HashMap<String, siderite::proto::admin::v1::Server> {
    servers
        .into_iter()
        .map(|s| (s.metadata.clone().unwrap().name, s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_register_concurrently_and_reregister() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let seed = 0xa1;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let hw = fake::hardware(seed, i);
            let r = register(&addr, &format!("boot-{i}"), hw.clone())
                .await
                .unwrap();
            assert!(r.created && !r.identity_issued && !r.accepted, "{r:?}");
            (r.server_id, hw)
        }));
    }
    let mut sent = HashMap::new();
    for t in tasks {
        let (id, hw) = t.await.unwrap();
        sent.insert(id, hw);
    }
    assert_eq!(sent.len(), 200, "every machine got its own server");

    let servers = by_name(list_servers(&server.addr).await.unwrap());
    assert_eq!(servers.len(), 200);
    for (id, hw) in &sent {
        let s = &servers[id];
        let st = s.status.clone().unwrap();
        assert_eq!(
            st.hardware.as_ref(),
            Some(hw),
            "hardware of {id} stored as sent"
        );
        assert_eq!(
            id,
            &hw.system.as_ref().unwrap().uuid,
            "a usable SMBIOS UUID names the server"
        );
        assert_eq!(st.phase, "discovered");
        assert!(
            !s.spec.as_ref().unwrap().accepted,
            "not accepted without an operator"
        );
    }

    // The same machines again, a new boot, one disk replaced: same servers, hardware updated.
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut hw = fake::hardware(seed, i);
            hw.disks[1] = BlockDevice {
                name: "sdb".into(),
                size_bytes: 4 << 40,
                bus: "sas".into(),
                ..Default::default()
            };
            let r = register(&addr, &format!("boot2-{i}"), hw).await.unwrap();
            assert!(!r.created, "re-registration of {i} is an update");
            r.server_id
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let servers = by_name(list_servers(&server.addr).await.unwrap());
    assert_eq!(servers.len(), 200, "no new servers from re-registration");
    let uuid0 = fake::hardware(seed, 0).system.unwrap().uuid;
    let st = servers[&uuid0].status.clone().unwrap();
    let disks: Vec<&str> = st
        .hardware
        .as_ref()
        .unwrap()
        .disks
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(disks, vec!["nvme0n1", "sdb"]);
    assert_eq!(st.registrations, 2);
    assert!(
        st.events
            .iter()
            .any(|e| e.reason == "HardwareChanged" && e.message.contains("disk added: sdb")),
        "{:?}",
        st.events
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_and_missing_uuids_get_issued_identities_found_again_by_mac() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let mut zero = fake::hardware(7, 1);
    zero.system.as_mut().unwrap().uuid = "00000000-0000-0000-0000-000000000000".into();
    let mut placeholder = fake::hardware(7, 2);
    placeholder.system.as_mut().unwrap().uuid = "03000200-0400-0500-0006-000700080009".into();
    let mut none = fake::hardware(7, 3);
    none.system = None;

    let a = register(&server.addr, "b1", zero.clone()).await.unwrap();
    let b = register(&server.addr, "b2", placeholder.clone())
        .await
        .unwrap();
    let c = register(&server.addr, "b3", none.clone()).await.unwrap();
    for (r, why) in [(&a, "all zeros"), (&b, "placeholder"), (&c, "no SMBIOS")] {
        assert!(r.identity_issued, "{r:?}");
        assert!(r.identity_reason.contains(why), "{r:?}");
    }
    let ids = [&a.server_id, &b.server_id, &c.server_id];
    assert!(ids
        .iter()
        .all(|id| !id.starts_with("00000000") && !id.starts_with("03000200")));

    // After a reboot (new boot ID, nothing remembered) each is found again by its MACs.
    let a2 = register(&server.addr, "b1-again", zero).await.unwrap();
    let c2 = register(&server.addr, "b3-again", none).await.unwrap();
    assert_eq!(
        (a2.server_id.as_str(), a2.created),
        (a.server_id.as_str(), false)
    );
    assert_eq!(
        (c2.server_id.as_str(), c2.created),
        (c.server_id.as_str(), false)
    );
    assert_eq!(list_servers(&server.addr).await.unwrap().len(), 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_uuid_from_another_machine_is_reported_never_merged() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let first = fake::hardware(9, 1);
    let mut clone = fake::hardware(9, 2);
    clone.system.as_mut().unwrap().uuid = first.system.as_ref().unwrap().uuid.clone();

    let a = register(&server.addr, "boot-a", first.clone())
        .await
        .unwrap();
    let b = register(&server.addr, "boot-b", clone.clone())
        .await
        .unwrap();
    assert_ne!(a.server_id, b.server_id);
    assert!(
        b.identity_issued && b.identity_reason.contains("already held"),
        "{b:?}"
    );

    let servers = by_name(list_servers(&server.addr).await.unwrap());
    assert_eq!(servers.len(), 2);
    for id in [&a.server_id, &b.server_id] {
        let st = servers[id].status.clone().unwrap();
        let cond = st
            .conditions
            .iter()
            .find(|c| c.r#type == "DuplicateUUID")
            .expect("condition set");
        assert_eq!(cond.status, "True");
    }
    assert_eq!(
        servers[&a.server_id]
            .status
            .clone()
            .unwrap()
            .hardware
            .unwrap(),
        first,
        "holder not overwritten"
    );
    assert_eq!(
        servers[&b.server_id]
            .status
            .clone()
            .unwrap()
            .hardware
            .unwrap(),
        clone
    );

    // The clone rebooting is found again as itself, not as the holder.
    let b2 = register(&server.addr, "boot-b2", clone).await.unwrap();
    assert_eq!(b2.server_id, b.server_id);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_session_shows_connected_accept_and_delete() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let hw = fake::hardware(11, 1);
    let id = hw.system.as_ref().unwrap().uuid.clone();
    let mut config = siderite_tests::agent_config(vec![server.addr.clone()], "agent-boot".into());
    config.boot_log = vec!["network: eth0 up, 10.0.0.5/24".into()];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_hw = hw.clone();
    // Disks are files in a scratch directory and power is a fake: this agent never
    // reaches the host's disks whatever the server asks.
    let scratch = tempfile::tempdir().unwrap();
    let executor = siderite_agent::commands::Executor::new(
        std::sync::Arc::new(siderite_agent::wipe::FileOpener::new(scratch.path())),
        std::sync::Arc::new(siderite_agent::install::FakePower::default()),
        Default::default(),
    );
    let agent = tokio::spawn(siderite_agent::session::run_with(
        config,
        move || agent_hw.clone(),
        executor,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let connected = |servers: Vec<siderite::proto::admin::v1::Server>| {
        servers
            .iter()
            .any(|s| s.status.as_ref().is_some_and(|st| st.connected))
    };
    let mut ok = false;
    for _ in 0..100 {
        if connected(list_servers(&server.addr).await.unwrap()) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the agent's session shows as connected");

    let mut admin = siderite_tests::admin(&server.addr).await.unwrap();
    // The boot log the agent sent up shows on the server, in one place with the rest.
    let mut logs = Vec::new();
    for _ in 0..100 {
        let s = admin
            .get_server(siderite::proto::admin::v1::GetServerRequest { name: id.clone() })
            .await
            .unwrap()
            .into_inner();
        logs = s.status.unwrap().recent_logs;
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].message, "network: eth0 up, 10.0.0.5/24");
    let s = admin
        .accept_server(AcceptServerRequest { name: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(s.spec.unwrap().accepted);
    // Accepting starts the first wipe at once: the agent is connected.
    let phase = s.status.unwrap().phase;
    assert!(["accepted", "wiping"].contains(&phase.as_str()), "{phase}");
    let missing = admin
        .accept_server(AcceptServerRequest {
            name: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Deleting a connected server ends its session; the agent registers again as new.
    admin
        .delete_server(DeleteServerRequest { name: id.clone() })
        .await
        .unwrap();
    let mut back = false;
    for _ in 0..200 {
        let servers = list_servers(&server.addr).await.unwrap();
        if servers.len() == 1 && !servers[0].spec.as_ref().unwrap().accepted && connected(servers) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back,
        "a deleted machine re-registers as a new, unaccepted server"
    );
    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accept_rule_accepts_matching_machines_only() {
    let server = InProcess::start(
        "manufacturer=Siderite*,serial=SIM-*-000001"
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();
    let yes = register(&server.addr, "a", fake::hardware(3, 1))
        .await
        .unwrap();
    let no = register(&server.addr, "b", fake::hardware(3, 2))
        .await
        .unwrap();
    assert!(yes.accepted);
    assert!(!no.accepted);
    server.stop().await.unwrap();
}

const REGISTER: &str = "/siderite.agent.v1.AgentService/Register";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    register(&server.addr, "seed", fake::hardware(5, 0))
        .await
        .unwrap();
    let before = list_servers(&server.addr).await.unwrap();
    let valid = RegisterRequest {
        boot_id: "boot".into(),
        agent_version: "t".into(),
        hardware: Some(fake::hardware(5, 1)),
        server_id: String::new(),
        join_token: String::new(),
    };

    // Unknown field 99 at the top level, and field 77 inside hardware.system.
    let mut unknown_top = valid.encode_to_vec();
    unknown_top.extend_from_slice(&[0x98, 0x06, 0x01]);
    let mut sys = System {
        uuid: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
    .encode_to_vec();
    sys.extend_from_slice(&[0xe8, 0x04, 0x01]);
    let mut hw = Hardware::default().encode_to_vec();
    hw.push(0x0a);
    hw.push(sys.len() as u8);
    hw.extend_from_slice(&sys);
    let mut unknown_nested = RegisterRequest {
        boot_id: "b".into(),
        ..Default::default()
    }
    .encode_to_vec();
    unknown_nested.push(0x1a);
    unknown_nested.push(hw.len() as u8);
    unknown_nested.extend_from_slice(&hw);

    let mut huge = valid.clone();
    huge.hardware.as_mut().unwrap().errors = vec!["x".repeat(4096); 400];

    let with = |f: &dyn Fn(&mut RegisterRequest)| {
        let mut r = valid.clone();
        f(&mut r);
        r.encode_to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, tonic::Code, &str)> = vec![
        (
            "garbage",
            vec![0xff, 0xff, 0xff, 0xff],
            tonic::Code::InvalidArgument,
            "malformed",
        ),
        (
            "truncated",
            valid.encode_to_vec()[..40].to_vec(),
            tonic::Code::InvalidArgument,
            "malformed",
        ),
        (
            "unknown top-level field",
            unknown_top,
            tonic::Code::InvalidArgument,
            "unknown field number 99 in siderite.agent.v1.RegisterRequest",
        ),
        (
            "unknown nested field",
            unknown_nested,
            tonic::Code::InvalidArgument,
            "unknown field number 77 in siderite.agent.v1.RegisterRequest.hardware.system",
        ),
        (
            "oversized",
            huge.encode_to_vec(),
            tonic::Code::OutOfRange,
            "",
        ),
        (
            "empty uuid",
            with(&|r| {
                r.hardware
                    .as_mut()
                    .unwrap()
                    .system
                    .as_mut()
                    .unwrap()
                    .uuid
                    .clear()
            }),
            tonic::Code::InvalidArgument,
            "uuid is empty",
        ),
        (
            "invalid uuid",
            with(&|r| {
                r.hardware.as_mut().unwrap().system.as_mut().unwrap().uuid = "not-a-uuid".into()
            }),
            tonic::Code::InvalidArgument,
            "invalid UUID",
        ),
        (
            "no boot id",
            with(&|r| r.boot_id.clear()),
            tonic::Code::InvalidArgument,
            "boot_id is empty",
        ),
        (
            "no hardware",
            with(&|r| r.hardware = None),
            tonic::Code::InvalidArgument,
            "hardware is missing",
        ),
        (
            "bad mac",
            with(&|r| r.hardware.as_mut().unwrap().nics[0].mac = "zz:zz".into()),
            tonic::Code::InvalidArgument,
            "invalid MAC",
        ),
        (
            "bad server id",
            with(&|r| r.server_id = "../../etc".into()),
            tonic::Code::InvalidArgument,
            "server_id",
        ),
        (
            "too many disks",
            with(&|r| r.hardware.as_mut().unwrap().disks = vec![BlockDevice::default(); 1025]),
            tonic::Code::InvalidArgument,
            "more than 1024",
        ),
    ];
    for (what, body, code, needle) in cases {
        let err = raw::unary(&server.addr, REGISTER, body)
            .await
            .expect_err(what);
        assert!(
            err.code() == code
                || (what == "oversized" && err.code() == tonic::Code::ResourceExhausted),
            "{what}: {err:?}"
        );
        assert!(
            err.message().contains(needle),
            "{what}: {:?}",
            err.message()
        );
    }
    let after = list_servers(&server.addr).await.unwrap();
    assert_eq!(before, after, "bad input changed nothing");

    // The same request, well-formed, still works afterwards.
    raw::unary(&server.addr, REGISTER, valid.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(list_servers(&server.addr).await.unwrap().len(), 2);
    server.stop().await.unwrap();
}
