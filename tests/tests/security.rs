//! Who may talk to a siderite server, over real TLS on loopback: agents need a join token
//! and then their own credential, agents refuse a server their pin does not name, the
//! metadata service answers only the machine itself, and the admin API refuses anonymous
//! callers and read-only operators on writes. Every refusal changes nothing.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};
use siderite::proto::admin::v1::{
    AcceptServerRequest, AllocateRequest, ApplyEnvironmentRequest, ApplyResourceRequest,
    CreateJoinTokenRequest, GetResourceRequest, ListJoinTokensRequest, ListResourcesRequest,
    ListServersRequest, RevokeJoinTokenRequest, RevokeOperatorRequest, RevokeServerRequest,
};
use siderite::proto::agent::v1::{
    agent_message, agent_service_client::AgentServiceClient, AgentMessage, Hardware, Hello,
    RegisterRequest, RegisterResponse, ServerMessage,
};
use siderite_server::accept::AutoAccept;
use siderite_server::boot::service::BootConfig;
use siderite_server::fake;
use siderite_tests::{access, admin, channel, list_servers, InProcess};
use tonic::Code;

fn request(boot: &str, hw: Hardware, join_token: &str) -> RegisterRequest {
    RegisterRequest {
        boot_id: boot.into(),
        agent_version: "test".into(),
        hardware: Some(hw),
        server_id: String::new(),
        join_token: join_token.into(),
    }
}

async fn register_with(
    addr: &str,
    req: RegisterRequest,
) -> Result<RegisterResponse, tonic::Status> {
    AgentServiceClient::new(channel(addr).await.unwrap())
        .register(req)
        .await
        .map(|r| r.into_inner())
}

/// Opens a session with `hello`; the first server message, or the refusal.
async fn open_session(
    addr: &str,
    hello: Hello,
) -> Result<
    (
        tokio::sync::mpsc::Sender<AgentMessage>,
        tonic::Streaming<ServerMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = AgentServiceClient::new(channel(addr).await.unwrap())
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // A refused hello shows as the stream's first item.
    match inbound.message().await {
        Ok(Some(_)) => Ok((tx, inbound)),
        Ok(None) => Err(tonic::Status::aborted("session closed at once")),
        Err(s) => Err(s),
    }
}

async fn server_count(addr: &str) -> usize {
    list_servers(addr).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_a_valid_join_token_and_refusals_change_nothing() {
    let server = InProcess::start(AutoAccept::All).await.unwrap();
    let addr = server.addr.clone();
    let good = access(&addr).join_token;
    let id = good.split('.').next().unwrap().to_string();
    let mut c = admin(&addr).await.unwrap();
    let expired = c
        .create_join_token(CreateJoinTokenRequest {
            description: "expires at once".into(),
            ttl_seconds: 1,
            no_boot: true,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revoked = c
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    c.revoke_join_token(RevokeJoinTokenRequest {
        id: revoked.id.clone(),
    })
    .await
    .unwrap();
    let cases = [
        ("no token", String::new()),
        ("wrong secret", format!("{id}.{}", "0".repeat(32))),
        ("unknown id", "zzzzzz.0123456789abcdef".to_string()),
        ("no dot", good.replace('.', "")),
        ("expired", expired),
        ("revoked", revoked.token.clone()),
        ("huge", format!("{id}.{}", "a".repeat(100_000))),
    ];
    for (what, token) in cases {
        let e = register_with(&addr, request("boot-x", fake::hardware(1, 0), &token))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(
            !e.message().contains(&token) || token.is_empty(),
            "{what}: the refusal echoes the token"
        );
        assert_eq!(server_count(&addr).await, 0, "{what} created a server");
    }
    // The valid token registers; the machine gets its own credential.
    let r = register_with(&addr, request("boot-1", fake::hardware(1, 0), &good))
        .await
        .unwrap();
    assert!(r.created && r.session_token.len() >= 32);
    assert_ne!(r.session_token, good);
    assert_eq!(server_count(&addr).await, 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_machines_credential_is_refused_and_revoking_kills_it() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let addr = server.addr.clone();
    let token = access(&addr).join_token;
    let a = register_with(&addr, request("boot-a", fake::hardware(2, 0), &token))
        .await
        .unwrap();
    let b = register_with(&addr, request("boot-b", fake::hardware(2, 1), &token))
        .await
        .unwrap();
    let before = list_servers(&addr).await.unwrap();
    let hello = |id: &str, boot: &str, tok: &str| Hello {
        server_id: id.into(),
        boot_id: boot.into(),
        session_token: tok.into(),
    };
    for (what, h) in [
        (
            "B's credential for A",
            hello(&a.server_id, "boot-a", &b.session_token),
        ),
        (
            "the join token as a credential",
            hello(&a.server_id, "boot-a", &token),
        ),
        ("no credential", hello(&a.server_id, "boot-a", "")),
        (
            "A's credential from another boot",
            hello(&a.server_id, "boot-b", &a.session_token),
        ),
    ] {
        let e = tokio::time::timeout(Duration::from_secs(10), open_session(&addr, h))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"))
            .expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    let after = list_servers(&addr).await.unwrap();
    assert_eq!(before, after, "refused sessions changed the servers");

    // A's own credential works; revoking the server closes the session and kills it.
    let (_tx, mut inbound) = open_session(&addr, hello(&a.server_id, "boot-a", &a.session_token))
        .await
        .unwrap();
    let mut c = admin(&addr).await.unwrap();
    let revoked = c
        .revoke_server(RevokeServerRequest {
            name: a.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked
        .status
        .unwrap()
        .events
        .iter()
        .any(|e| e.reason == "CredentialRevoked"));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the session outlived the revocation");
    let e = open_session(&addr, hello(&a.server_id, "boot-a", &a.session_token))
        .await
        .expect_err("a revoked credential");
    assert_eq!(e.code(), Code::PermissionDenied);
    // B is untouched, and A may join again with the join token (a new credential).
    open_session(&addr, hello(&b.server_id, "boot-b", &b.session_token))
        .await
        .unwrap();
    let again = register_with(&addr, request("boot-a", fake::hardware(2, 0), &token))
        .await
        .unwrap();
    assert_eq!(again.server_id, a.server_id);
    assert_ne!(again.session_token, a.session_token);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pinned_to_another_ca_refuses_to_talk() {
    let ours = InProcess::start(AutoAccept::All).await.unwrap();
    let theirs = InProcess::start(AutoAccept::All).await.unwrap();
    let pin = access(&ours.addr).pin;
    assert_ne!(pin, access(&theirs.addr).pin, "every site has its own CA");
    // The connection itself fails, naming both CAs.
    let e = siderite_agent::session::connect(&theirs.addr, Some(pin), Duration::from_secs(5))
        .await
        .expect_err("a server of another CA");
    let text = e.to_string();
    assert!(
        text.contains("does not chain to the pinned CA") && text.contains(&pin.to_string()),
        "{text}"
    );
    // No pin at all: the agent talks to no one.
    let e = siderite_agent::session::connect(&theirs.addr, None, Duration::from_secs(5))
        .await
        .expect_err("no pin");
    assert!(e.to_string().contains("siderite.ca="), "{e}");
    // A real agent pointed at the other server keeps refusing: nothing registers there.
    let mut config =
        siderite_agent::session::Config::new(vec![theirs.addr.clone()], "boot-pinned".into());
    config.ca = Some(pin);
    config.join_token = siderite_agent::session::Secret(access(&theirs.addr).join_token);
    config.max_backoff = Duration::from_millis(200);
    let dir = tempfile::tempdir().unwrap();
    let executor = siderite_agent::commands::Executor::new(
        Arc::new(siderite_agent::wipe::NoDisks("test")),
        Arc::new(siderite_agent::install::FakePower::default()),
        siderite_agent::commands::Timing::default(),
    );
    let _ = dir;
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        siderite_agent::session::run_with(
            config,
            || fake::hardware(3, 0),
            executor,
            std::future::pending(),
        ),
    )
    .await;
    assert_eq!(server_count(&theirs.addr).await, 0);
    // A plain (non-TLS) gRPC client gets nowhere either.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", theirs.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = AgentServiceClient::new(ch)
            .register(request(
                "boot-plain",
                fake::hardware(3, 1),
                &access(&theirs.addr).join_token,
            ))
            .await;
        assert!(r.is_err(), "plain HTTP/2 was answered: {r:?}");
    }
    assert_eq!(server_count(&theirs.addr).await, 0);
    ours.stop().await.unwrap();
    theirs.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_anonymous_callers_and_read_only_writes() {
    let server = InProcess::start(AutoAccept::None).await.unwrap();
    let addr = server.addr.clone();
    let a = access(&addr);
    siderite_tests::register(&addr, "boot-1", fake::hardware(4, 0))
        .await
        .unwrap();
    let name = list_servers(&addr).await.unwrap()[0]
        .metadata
        .clone()
        .unwrap()
        .name;
    let ch = channel(&addr).await.unwrap();
    // Anonymous, a wrong token, a malformed header.
    let mut anon =
        siderite::proto::admin::v1::admin_service_client::AdminServiceClient::new(ch.clone());
    let e = anon.list_servers(ListServersRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = anon
        .accept_server(AcceptServerRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    for bad in ["admin.wrong", "admin", "nobody.x", ""] {
        let mut c = siderite_server::cli::admin_client(ch.clone(), bad).unwrap();
        let e = c.list_servers(ListServersRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "token {bad:?}: {e:?}");
    }
    // Read-only: reads yes, writes no, secrets no.
    let mut viewer = siderite_server::cli::admin_client(ch.clone(), &a.viewer_token).unwrap();
    assert_eq!(
        viewer
            .list_servers(ListServersRequest {})
            .await
            .unwrap()
            .into_inner()
            .servers
            .len(),
        1
    );
    let e = viewer
        .accept_server(AcceptServerRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("admin role"), "{e:?}");
    let e = viewer
        .create_join_token(CreateJoinTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = viewer
        .list_join_tokens(ListJoinTokensRequest { show_secrets: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let listed = viewer
        .list_join_tokens(ListJoinTokensRequest {
            show_secrets: false,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(!listed.is_empty() && listed.iter().all(|t| t.token.is_empty()));
    let st = list_servers(&addr).await.unwrap()[0].clone();
    assert!(
        !st.spec.unwrap().accepted,
        "a refused accept accepted the server"
    );

    // MachineConfig contents are secrets: redacted unless an admin asks.
    let mut c = admin(&addr).await.unwrap();
    c.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {name: w}\nspec:\n  base: \"version: v1alpha1\\nmachine:\\n  token: very-secret-machine-token\\n\"\n".into(),
    })
    .await
    .unwrap();
    let get = |show: bool| GetResourceRequest {
        kind: "MachineConfig".into(),
        name: "w".into(),
        show_secrets: show,
    };
    let redacted = viewer
        .get_resource(get(false))
        .await
        .unwrap()
        .into_inner()
        .json;
    assert!(
        !redacted.contains("very-secret-machine-token"),
        "{redacted}"
    );
    let listed = c
        .list_resources(ListResourcesRequest {
            kind: "MachineConfig".into(),
            show_secrets: false,
        })
        .await
        .unwrap()
        .into_inner()
        .json;
    assert!(!listed.concat().contains("very-secret-machine-token"));
    let e = viewer.get_resource(get(true)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let full = c.get_resource(get(true)).await.unwrap().into_inner().json;
    assert!(full.contains("very-secret-machine-token"));

    // A revoked operator is refused from then on.
    c.revoke_operator(RevokeOperatorRequest {
        name: "viewer".into(),
    })
    .await
    .unwrap();
    let e = viewer
        .list_servers(ListServersRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    server.stop().await.unwrap();
}

/// A thin agent: registers, holds its session, acks wipes as done and installs as
/// accepted, and keeps the install command line it was sent.
async fn thin_agent(addr: &str, seed: u32, i: u32) -> (String, Arc<Mutex<Option<String>>>) {
    let mut hw = fake::hardware(seed, i);
    hw.system.as_mut().unwrap().family = "security".into();
    let a = access(addr);
    let bench_access = siderite_server::bench::Access {
        addr: addr.to_string(),
        pin: a.pin,
        admin_token: a.admin_token,
        join_token: a.join_token,
    };
    let (id, tx, mut inbound) = siderite_server::bench::open_session_from(&bench_access, None, hw)
        .await
        .unwrap();
    // The session's first command: the session is open.
    inbound.message().await.unwrap().unwrap();
    let cmdline = Arc::new(Mutex::new(None));
    let seen = cmdline.clone();
    tokio::spawn(siderite_server::bench::thin_agent(tx, inbound, move |i| {
        *seen.lock().unwrap() = Some(i.cmdline.clone());
    }));
    (id, cmdline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_answers_only_the_machine_itself() {
    // The boot HTTP port is picked free and then bound by the server: another test may
    // take it in between, so a failed start is tried again on a new port.
    let mut attempt = 0;
    let (server, http) = loop {
        attempt += 1;
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let boot_http = http.clone();
        let started = InProcess::start_with(AutoAccept::All, move |config, dir| {
            let image = dir.join("agent-image");
            std::fs::create_dir_all(&image)?;
            std::fs::write(image.join("vmlinuz"), b"agent kernel")?;
            std::fs::write(image.join("initramfs.cpio.zst"), b"agent initrd")?;
            config.boot = Some(BootConfig {
                image_dir: image,
                http_listen: boot_http.parse()?,
                advertise: boot_http.clone(),
                tftp_listen: None,
                ipxe_dir: dir.to_path_buf(),
                dhcp: None,
                interfaces: vec![],
                agent_args: vec![],
                arm64_boot_file: None,
            });
            config.lifecycle.reconcile_every = Duration::from_millis(200);
            Ok(())
        })
        .await;
        match started {
            Ok(s) => break (s, http),
            Err(e) if attempt < 3 => eprintln!("server start failed ({e:#}); trying another port"),
            Err(e) => panic!("server start: {e:#}"),
        }
    };
    let addr = server.addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = (dir.path().join("k"), dir.path().join("i"));
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"initrd").unwrap();
    let sha = |b: &[u8]| format!("{:x}", Sha512::digest(b));
    let mut c = admin(&addr).await.unwrap();
    c.apply_environment(ApplyEnvironmentRequest {
        manifest: format!(
            "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata: {{name: talos}}\nspec:\n  kernel: {{path: {}, sha512: {}}}\n  initrd: {{path: {}, sha512: {}}}\n  args: []\n  arch: amd64\n",
            k.display(), sha(b"kernel"), i.display(), sha(b"initrd")
        ),
    })
    .await
    .unwrap();
    c.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: sec}\nspec:\n  selectors:\n    - {field: system.family, op: In, values: [security]}\n".into(),
    })
    .await
    .unwrap();
    c.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {name: w}\nspec:\n  base: \"version: v1alpha1\\nmachine:\\n  token: machine-secret\\n\"\n".into(),
    })
    .await
    .unwrap();
    let (ida, cmd_a) = thin_agent(&addr, 9, 0).await;
    let (idb, cmd_b) = thin_agent(&addr, 9, 1).await;
    // Both clean (accepted, wiped), then both allocated.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clean = list_servers(&addr)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.phase == "clean"))
            .count();
        if clean == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "servers never clean");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..2 {
        c.allocate(AllocateRequest {
            server_class: "sec".into(),
            environment: "talos".into(),
            machine_config: "w".into(),
            name: format!("b{n}"),
        })
        .await
        .unwrap();
    }
    let url_of = |cmd: &Arc<Mutex<Option<String>>>| {
        cmd.lock().unwrap().as_ref().and_then(|c| {
            c.split_whitespace()
                .find_map(|a| a.strip_prefix("talos.config="))
                .map(str::to_string)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ua, ub) = loop {
        if let (Some(a), Some(b)) = (url_of(&cmd_a), url_of(&cmd_b)) {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "no install commands");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ua.starts_with("https://"), "the config URL is TLS: {ua}");
    let cmdline_a = cmd_a.lock().unwrap().clone().unwrap();
    assert!(cmdline_a.contains(&format!("siderite.ca={}", access(&addr).pin)));
    let token_a = ua.split("token=").nth(1).unwrap().to_string();
    let token_b = ub.split("token=").nth(1).unwrap().to_string();
    assert_ne!(token_a, token_b);
    let base = ua.split("/configdata/").next().unwrap().to_string();
    for bad in [
        format!("{base}/configdata/{ida}"),
        format!("{base}/configdata/{ida}?token="),
        format!("{base}/configdata/{ida}?token={token_b}"),
        format!("{base}/configdata/{ida}?token={}", access(&addr).join_token),
        format!(
            "{base}/configdata/{ida}?token={}",
            access(&addr).admin_token
        ),
        format!("{base}/configdata/{idb}?token={token_a}"),
        format!("{base}/configdata/nope?token={token_a}"),
    ] {
        let (code, body) = siderite_tests::https_get(&addr, &bad).await.unwrap();
        assert_eq!((code, body.as_str()), (403, "forbidden\n"), "{bad}");
    }
    // Not over plain HTTP either (unless --insecure-http-metadata).
    let plain = format!("http://{http}/configdata/{ida}?token={token_a}");
    let r = reqwest::get(&plain).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "metadata answered over plain HTTP"
    );
    // The machine itself gets its config.
    let (code, body) = siderite_tests::https_get(&addr, &ua).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("machine-secret"));
    // Revoking the server kills the metadata token too.
    c.revoke_server(RevokeServerRequest { name: ida.clone() })
        .await
        .unwrap();
    let (code, _) = siderite_tests::https_get(&addr, &ua).await.unwrap();
    assert_eq!(code, 403);
    let (code, _) = siderite_tests::https_get(&addr, &ub).await.unwrap();
    assert_eq!(code, 200, "B's token died with A's");

    // The boot script hands agents the pin and the newest boot join token; no machine
    // credential, no config. With no usable boot token it holds the agent back.
    let script = reqwest::get(format!(
        "http://{http}/ipxe?uuid=11111111-2222-4333-8444-555555555555&mac=52-54-00-00-00-99"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        script.contains(&format!("siderite.ca={}", access(&addr).pin)),
        "{script}"
    );
    let tokens = c
        .list_join_tokens(ListJoinTokensRequest { show_secrets: true })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let boot = tokens
        .iter()
        .rfind(|t| t.boot && t.revoked.is_empty())
        .unwrap();
    assert!(
        script.contains(&format!("siderite.token={}", boot.token)),
        "{script}"
    );
    for secret in [&token_a, &token_b, &access(&addr).admin_token] {
        assert!(!script.contains(secret.as_str()));
    }
    for t in tokens.iter().filter(|t| t.boot) {
        c.revoke_join_token(RevokeJoinTokenRequest { id: t.id.clone() })
            .await
            .unwrap();
    }
    let script = reqwest::get(format!(
        "http://{http}/ipxe?uuid=11111111-2222-4333-8444-555555555555&mac=52-54-00-00-00-99"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        script.contains("no usable boot join token") && !script.contains("siderite.token="),
        "{script}"
    );
    server.stop().await.unwrap();
}

/// Everything secret that crosses a server in one run (join token, operator tokens,
/// session credentials, the metadata token, a machine config) never shows in its log,
/// even at debug level, including when it is presented wrongly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = siderite_tests::ServerProcess::start_logged(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auto-accept", "all"],
        Some(&log),
    )
    .await
    .unwrap();
    let addr = server.addr.clone();
    let a = access(&addr);
    let (id, _cmd) = thin_agent(&addr, 11, 0).await;
    let wrong = format!(
        "{}.{}",
        a.join_token.split('.').next().unwrap(),
        "f".repeat(32)
    );
    let _ = register_with(&addr, request("boot-w", fake::hardware(11, 1), &wrong)).await;
    let bad_admin = format!("admin.{}", "e".repeat(64));
    let mut c =
        siderite_server::cli::admin_client(channel(&addr).await.unwrap(), &bad_admin).unwrap();
    let _ = c.list_servers(ListServersRequest {}).await;
    let mut c = admin(&addr).await.unwrap();
    c.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {name: w}\nspec:\n  base: \"version: v1alpha1\\nmachine:\\n  token: logged-secret-machine-token\\n\"\n".into(),
    })
    .await
    .unwrap();
    c.revoke_server(RevokeServerRequest { name: id })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("registered"), "the log is empty? {text}");
    let secret = |t: &str| t.split('.').nth(1).unwrap().to_string();
    for (what, s) in [
        ("join token secret", secret(&a.join_token)),
        ("wrong join token secret", "f".repeat(32)),
        ("admin token secret", secret(&a.admin_token)),
        ("viewer token secret", secret(&a.viewer_token)),
        ("wrong admin secret", "e".repeat(64)),
        ("machine config", "logged-secret-machine-token".to_string()),
    ] {
        assert!(!text.contains(&s), "{what} in the server log");
    }
}
