//! The operator CLI: talks to the admin API and prints tables, JSON or YAML.
pub mod lifecycle;
pub mod security;
pub mod table;

use std::fmt::Write as _;

use anyhow::Context;
use siderite::proto::admin::v1::{
    admin_service_client::AdminServiceClient, AcceptServerRequest, DeleteServerRequest,
    GetServerRequest, ListServersRequest, Server,
};
use siderite::proto::agent::v1::Hardware;
use tonic::transport::Channel;

use table::{age, bytes, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Where the CLI talks to and as whom: one context of an operator config.
pub use crate::clientconfig::Resolved as Target;

/// Adds the operator's bearer token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// An authenticated admin API client.
pub type Admin =
    AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// An admin client on `channel` presenting `token`.
pub fn admin_client(channel: Channel, token: &str) -> anyhow::Result<Admin> {
    let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the token in the config is not valid header text"))?;
    value.set_sensitive(true);
    Ok(AdminServiceClient::with_interceptor(channel, Bearer(value)))
}

pub async fn client(target: &Target) -> anyhow::Result<Admin> {
    let channel = siderite::tls::channel(
        &target.server,
        target.pin,
        std::time::Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("connecting to the siderite server at {}", target.server))?;
    admin_client(channel, &target.token)
}

/// The target from an operator config: `path` if given, else `$HOME/.siderite/config`,
/// else `/var/lib/siderite/siderite-config.yaml` (what `serve` writes with its default
/// data directory). `server` overrides the config's address.
pub fn target(
    path: Option<&std::path::Path>,
    context: Option<&str>,
    server: Option<&str>,
) -> anyhow::Result<Target> {
    let candidates: Vec<std::path::PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(".siderite/config"))
            .into_iter()
            .chain([std::path::PathBuf::from(
                "/var/lib/siderite/siderite-config.yaml",
            )])
            .collect(),
    };
    let Some(found) = candidates.iter().find(|p| path.is_some() || p.exists()) else {
        anyhow::bail!(
            "no operator config: pass --siderite-config FILE or set SIDERITE_CONFIG \
             (`siderite serve` writes <data-dir>/siderite-config.yaml on its first start)"
        );
    };
    let config = crate::clientconfig::ClientConfig::load(found).map_err(anyhow::Error::msg)?;
    let mut t = config.resolve(context).map_err(anyhow::Error::msg)?;
    if let Some(s) = server {
        t.server = s.to_string();
    }
    Ok(t)
}

fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", s.message())
}

pub async fn get_servers(addr: &Target, output: Output) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let mut servers = c
        .list_servers(ListServersRequest {})
        .await
        .map_err(|s| status_err("listing servers", s))?
        .into_inner()
        .servers;
    servers.sort_by(|a, b| crate::model::name(a).cmp(crate::model::name(b)));
    render_servers(&servers, true, output, time::OffsetDateTime::now_utc())
}

pub async fn get_server(addr: &Target, name: &str, output: Output) -> anyhow::Result<String> {
    let s = fetch(addr, name).await?;
    render_servers(
        std::slice::from_ref(&s),
        false,
        output,
        time::OffsetDateTime::now_utc(),
    )
}

async fn fetch(addr: &Target, name: &str) -> anyhow::Result<Server> {
    let mut c = client(addr).await?;
    Ok(c.get_server(GetServerRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("server {name}"), s))?
        .into_inner())
}

pub async fn describe_server(addr: &Target, name: &str) -> anyhow::Result<String> {
    let s = fetch(addr, name).await?;
    Ok(describe(&s, time::OffsetDateTime::now_utc()))
}

pub async fn accept(addr: &Target, name: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.accept_server(AcceptServerRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("accepting server {name}"), s))?;
    Ok(format!("server/{name} accepted\n"))
}

pub async fn delete_server(addr: &Target, name: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.delete_server(DeleteServerRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("deleting server {name}"), s))?;
    Ok(format!("server/{name} deleted\n"))
}

/// A list of items, the first few shown and the rest counted.
fn compact(items: Vec<String>, show: usize) -> String {
    if items.is_empty() {
        return "<none>".into();
    }
    let n = items.len();
    let mut s = items.into_iter().take(show).collect::<Vec<_>>().join(",");
    if n > show {
        let _ = write!(s, ",+{}", n - show);
    }
    s
}

fn disks_cell(hw: &Hardware) -> String {
    compact(
        hw.disks
            .iter()
            .map(|d| format!("{}:{}", d.name, bytes(d.size_bytes)))
            .collect(),
        4,
    )
}

fn nics_cell(hw: &Hardware) -> String {
    compact(
        hw.nics
            .iter()
            .filter(|n| !n.r#virtual)
            .map(|n| {
                format!(
                    "{}:{}",
                    n.name,
                    if n.driver_bound {
                        n.driver.as_str()
                    } else {
                        "no-driver"
                    }
                )
            })
            .collect(),
        4,
    )
}

/// Renders servers; `as_list` gives JSON/YAML a kubectl-style `List` even for one item.
pub fn render_servers(
    servers: &[Server],
    as_list: bool,
    output: Output,
    now: time::OffsetDateTime,
) -> anyhow::Result<String> {
    let single = (!as_list && servers.len() == 1).then(|| &servers[0]);
    match output {
        Output::Json => {
            let v = if let Some(one) = single {
                serde_json::to_string_pretty(one)?
            } else {
                serde_json::to_string_pretty(
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": servers}),
                )?
            };
            Ok(v + "\n")
        }
        Output::Yaml => Ok(if let Some(one) = single {
            serde_yaml_ng::to_string(one)?
        } else {
            serde_yaml_ng::to_string(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": servers}),
            )?
        }),
        Output::Table | Output::Wide => {
            let wide = output == Output::Wide;
            let mut header = vec![
                "NAME",
                "ACCEPTED",
                "PHASE",
                "CONNECTED",
                "MANUFACTURER",
                "PRODUCT",
                "CPUS",
                "MEMORY",
                "DISKS",
                "NICS",
                "AGE",
            ];
            if wide {
                header.extend(["SERIAL", "MACS", "ADDRESS", "IDENTITY"]);
            }
            let mut t = Table::new(header);
            for s in servers {
                let meta = s.metadata.clone().unwrap_or_default();
                let spec = s.spec.clone().unwrap_or_default();
                let st = s.status.clone().unwrap_or_default();
                let hw = st.hardware.clone().unwrap_or_default();
                let sys = hw.system.clone().unwrap_or_default();
                let cpu = hw.cpu.clone().unwrap_or_default();
                let mem = hw.memory.clone().unwrap_or_default();
                let or_none = |s: &str| {
                    if s.is_empty() {
                        "<none>".to_string()
                    } else {
                        s.to_string()
                    }
                };
                let mut row = vec![
                    meta.name.clone(),
                    spec.accepted.to_string(),
                    or_none(&st.phase),
                    st.connected.to_string(),
                    or_none(&sys.manufacturer),
                    or_none(&sys.product),
                    cpu.threads.to_string(),
                    bytes(mem.total_bytes),
                    disks_cell(&hw),
                    nics_cell(&hw),
                    age(&meta.creation_timestamp, now),
                ];
                if wide {
                    let macs = compact(
                        hw.nics
                            .iter()
                            .filter(|n| !n.r#virtual)
                            .map(|n| n.mac.clone())
                            .collect(),
                        4,
                    );
                    let identity = if st.identity_issued {
                        "issued"
                    } else {
                        "smbios"
                    };
                    row.extend([
                        or_none(&sys.serial),
                        macs,
                        or_none(&st.peer_address),
                        identity.to_string(),
                    ]);
                }
                t.row(row);
            }
            Ok(t.render())
        }
    }
}

/// One machine's whole story on one screen.
pub fn describe(s: &Server, now: time::OffsetDateTime) -> String {
    let meta = s.metadata.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    let hw = st.hardware.clone().unwrap_or_default();
    let mut o = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(o, "{:<18}{}", format!("{k}:"), v);
    };
    kv("Name", meta.name.clone());
    kv(
        "Created",
        format!(
            "{} ({} ago)",
            meta.creation_timestamp,
            age(&meta.creation_timestamp, now)
        ),
    );
    kv("Resource version", meta.resource_version.to_string());
    kv("Accepted", spec.accepted.to_string());
    kv("Cordoned", spec.cordoned.to_string());
    kv("Phase", st.phase.clone());
    if !st.reason.is_empty() {
        kv("Dirty because", st.reason.clone());
    }
    if !st.binding.is_empty() {
        kv("Binding", st.binding.clone());
    }
    if !st.pending_command.is_empty() {
        kv(
            "Pending",
            format!(
                "{} (since {}, {} ago)",
                st.pending_command,
                st.pending_since,
                age(&st.pending_since, now)
            ),
        );
    }
    if !spec.wipe_mode.is_empty() {
        kv("Wipe mode", spec.wipe_mode.clone());
    }
    kv("Connected", st.connected.to_string());
    kv(
        "SMBIOS UUID",
        if st.smbios_uuid.is_empty() {
            "<none>".into()
        } else {
            st.smbios_uuid.clone()
        },
    );
    kv(
        "Identity",
        if st.identity_issued {
            format!("issued by the server: {}", st.identity_reason)
        } else {
            "SMBIOS UUID".into()
        },
    );
    kv(
        "Agent",
        format!("{} (boot {})", st.agent_version, st.boot_id),
    );
    kv("Address", st.peer_address.clone());
    kv("First seen", st.first_seen.clone());
    kv(
        "Last seen",
        format!("{} ({} registrations)", st.last_seen, st.registrations),
    );
    if let Some(sys) = &hw.system {
        kv(
            "System",
            format!(
                "{} {} {} (serial {}, sku {}, family {})",
                sys.manufacturer, sys.product, sys.version, sys.serial, sys.sku, sys.family
            ),
        );
    } else {
        kv("System", "<no SMBIOS>".into());
    }
    if let Some(b) = &hw.baseboard {
        kv(
            "Baseboard",
            format!(
                "{} {} {} (serial {})",
                b.manufacturer, b.product, b.version, b.serial
            ),
        );
    }
    if let Some(c) = &hw.chassis {
        kv(
            "Chassis",
            format!(
                "{} {} (serial {})",
                c.manufacturer, c.chassis_type, c.serial
            ),
        );
    }
    if let Some(b) = &hw.bios {
        kv(
            "BIOS",
            format!("{} {} ({})", b.vendor, b.version, b.release_date),
        );
    }
    if let Some(f) = &hw.firmware {
        kv(
            "Boot mode",
            format!(
                "{} (secure boot {})",
                f.boot_mode,
                if f.secure_boot { "on" } else { "off" }
            ),
        );
    }
    kv(
        "Kernel",
        format!("{} {} (hostname {})", hw.kernel, hw.arch, hw.hostname),
    );
    if let Some(c) = &hw.cpu {
        kv(
            "CPU",
            format!(
                "{} ({} sockets, {} cores, {} threads{})",
                c.model,
                c.sockets,
                c.cores,
                c.threads,
                if c.virtualization {
                    ", virtualization"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(m) = &hw.memory {
        kv(
            "Memory",
            format!("{} in {} modules", bytes(m.total_bytes), m.modules.len()),
        );
    }
    let _ = writeln!(o, "\nDisks:");
    let mut t = Table::new([
        "NAME",
        "SIZE",
        "BUS",
        "TYPE",
        "MODEL",
        "SERIAL",
        "WWN",
        "FLAGS",
        "SIGNATURES",
    ]);
    for d in &hw.disks {
        let mut flags = Vec::new();
        if d.removable {
            flags.push("removable");
        }
        if d.read_only {
            flags.push("ro");
        }
        if d.rotational {
            flags.push("rotational");
        }
        t.row(vec![
            d.name.clone(),
            bytes(d.size_bytes),
            d.bus.clone(),
            d.disk_type.clone(),
            d.model.clone(),
            d.serial.clone(),
            d.wwn.clone(),
            flags.join(","),
            d.signatures.join(","),
        ]);
    }
    indent(&mut o, &t.render());
    let _ = writeln!(o, "\nNICs:");
    let mut t = Table::new([
        "NAME",
        "MAC",
        "DRIVER",
        "PCI",
        "STATE",
        "SPEED",
        "ADDRESSES",
    ]);
    for n in &hw.nics {
        t.row(vec![
            n.name.clone(),
            n.mac.clone(),
            if n.driver_bound {
                n.driver.clone()
            } else {
                "<no driver bound>".into()
            },
            if n.pci_address.is_empty() {
                String::new()
            } else {
                format!("{} [{}:{}]", n.pci_address, n.pci_vendor, n.pci_device)
            },
            n.operstate.clone(),
            if n.speed_mbps > 0 {
                format!("{}Mb/s", n.speed_mbps)
            } else {
                String::new()
            },
            n.addresses.join(","),
        ]);
    }
    indent(&mut o, &t.render());
    let _ = writeln!(o, "\nPCI devices:      {}", hw.pci.len());
    if !hw.errors.is_empty() {
        let _ = writeln!(o, "\nInventory errors:");
        for e in &hw.errors {
            let _ = writeln!(o, "  {e}");
        }
    }
    if !st.progress.is_empty() {
        let _ = writeln!(o, "\nProgress ({}):", st.pending_command);
        let mut t = Table::new(["SUBJECT", "DONE", "TOTAL", "RATE", "ETA"]);
        for p in &st.progress {
            t.row(vec![
                p.subject.clone(),
                bytes(p.done_bytes),
                bytes(p.total_bytes),
                format!("{}/s", bytes(p.rate_bytes_per_sec)),
                format!("{}s", p.eta_seconds),
            ]);
        }
        indent(&mut o, &t.render());
    }
    if !st.last_wipe.is_empty() {
        let _ = writeln!(o, "\nLast wipe ({}):", st.wipe_mode);
        let mut t = Table::new([
            "DISK", "RESULT", "SIZE", "METHODS", "WRITTEN", "VERIFIED", "TIME", "REMOVED",
        ]);
        for d in &st.last_wipe {
            t.row(vec![
                d.disk.clone(),
                if d.ok {
                    "ok".into()
                } else {
                    format!("FAILED: {}", d.error)
                },
                bytes(d.size_bytes),
                d.methods.join("+"),
                bytes(d.bytes_written + d.bytes_offloaded),
                format!(
                    "{} in {} regions",
                    bytes(d.verified_bytes),
                    d.verified_regions
                ),
                format!("{:.1}s", (d.wipe_millis + d.verify_millis) as f64 / 1000.0),
                d.signatures_removed.join(","),
            ]);
        }
        indent(&mut o, &t.render());
        for d in st.last_wipe.iter().filter(|d| !d.notes.is_empty()) {
            let _ = writeln!(o, "  {}: {}", d.disk, d.notes.join("; "));
        }
    }
    if !st.server_classes.is_empty() {
        let _ = writeln!(o, "\nServer classes:");
        for c in &st.server_classes {
            if c.matches {
                let _ = writeln!(o, "  {:<24}matches", c.name);
            } else {
                let _ = writeln!(o, "  {:<24}no: {}", c.name, c.reasons.join("; "));
            }
        }
    }
    let _ = writeln!(o, "\nConditions:");
    let mut t = Table::new(["TYPE", "STATUS", "REASON", "MESSAGE"]);
    for c in &st.conditions {
        t.row(vec![
            c.r#type.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    indent(&mut o, &t.render());
    if !st.recent_logs.is_empty() {
        let _ = writeln!(o, "\nRecent agent logs:");
        for l in &st.recent_logs {
            let when = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(l.unix_millis) * 1_000_000,
            )
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
            let _ = writeln!(o, "  {when} {:<5} {}", l.level, l.message);
        }
    }
    let _ = writeln!(o, "\nEvents:");
    let mut t = Table::new(["AGE", "REASON", "MESSAGE"]);
    for e in &st.events {
        t.row(vec![age(&e.time, now), e.reason.clone(), e.message.clone()]);
    }
    indent(&mut o, &t.render());
    o
}

fn indent(o: &mut String, block: &str) {
    for line in block.lines() {
        let _ = writeln!(o, "  {line}");
    }
}

/// `siderite apply -f FILE`: an Environment manifest (YAML or JSON).
pub async fn apply(addr: &Target, manifest: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let reply = c
        .apply_environment(siderite::proto::admin::v1::ApplyEnvironmentRequest {
            manifest: manifest.to_string(),
        })
        .await
        .map_err(|s| status_err("applying", s))?
        .into_inner();
    let env: serde_json::Value = serde_json::from_str(&reply.json)?;
    let name = env["metadata"]["name"].as_str().unwrap_or_default();
    Ok(if env["status"]["ready"] == true {
        format!("environment/{name} applied, assets verified\n")
    } else {
        format!(
            "environment/{name} applied, NOT ready: {}\n",
            env["status"]["reason"].as_str().unwrap_or("unknown")
        )
    })
}

pub async fn get_environments(addr: &Target, output: Output) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let items: Vec<serde_json::Value> = c
        .list_environments(siderite::proto::admin::v1::ListEnvironmentsRequest {})
        .await
        .map_err(|s| status_err("listing environments", s))?
        .into_inner()
        .json
        .iter()
        .map(|j| serde_json::from_str(j))
        .collect::<Result<_, _>>()?;
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(&list)? + "\n"),
        Output::Yaml => Ok(serde_yaml_ng::to_string(&list)?),
        Output::Table | Output::Wide => {
            let mut t = Table::new(["NAME", "ARCH", "READY", "REASON"]);
            for e in &items {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                t.row(vec![
                    s(&e["metadata"]["name"]),
                    s(&e["spec"]["arch"]),
                    (e["status"]["ready"] == true).to_string(),
                    s(&e["status"]["reason"]),
                ]);
            }
            Ok(t.render())
        }
    }
}

pub async fn delete_environment(addr: &Target, name: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.delete_environment(siderite::proto::admin::v1::DeleteEnvironmentRequest {
        name: name.into(),
    })
    .await
    .map_err(|s| status_err(&format!("deleting environment {name}"), s))?;
    Ok(format!("environment/{name} deleted\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use siderite::proto::admin::v1::{ObjectMeta, ServerSpec, ServerStatus};
    use siderite::proto::agent::v1::{BlockDevice, Cpu, Memory, Nic, System};

    fn sample() -> Server {
        Server {
            api_version: crate::model::API_VERSION.into(),
            kind: "Server".into(),
            metadata: Some(ObjectMeta {
                name: "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e".into(),
                creation_timestamp: "2026-01-01T00:00:00Z".into(),
                resource_version: 7,
                ..Default::default()
            }),
            spec: Some(ServerSpec {
                accepted: false,
                cordoned: false,
                wipe_mode: String::new(),
            }),
            status: Some(ServerStatus {
                phase: "discovered".into(),
                connected: true,
                smbios_uuid: "5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e".into(),
                peer_address: "10.0.0.5:40000".into(),
                hardware: Some(Hardware {
                    system: Some(System {
                        manufacturer: "QEMU".into(),
                        product: "Standard PC".into(),
                        serial: "S1".into(),
                        ..Default::default()
                    }),
                    cpu: Some(Cpu {
                        threads: 2,
                        ..Default::default()
                    }),
                    memory: Some(Memory {
                        total_bytes: 1 << 30,
                        modules: vec![],
                    }),
                    disks: vec![
                        BlockDevice {
                            name: "vda".into(),
                            size_bytes: 10 << 30,
                            bus: "virtio".into(),
                            ..Default::default()
                        },
                        BlockDevice {
                            name: "nvme0n1".into(),
                            size_bytes: 4 << 30,
                            bus: "nvme".into(),
                            ..Default::default()
                        },
                    ],
                    nics: vec![
                        Nic {
                            name: "ens3".into(),
                            mac: "52:54:00:00:00:01".into(),
                            driver: "e1000".into(),
                            driver_bound: true,
                            ..Default::default()
                        },
                        Nic {
                            name: "ens4".into(),
                            mac: "52:54:00:00:00:02".into(),
                            pci_address: "0000:00:04.0".into(),
                            pci_vendor: "8086".into(),
                            pci_device: "10d3".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn server_table_snapshot() {
        let now = time::macros::datetime!(2026-01-01 00:02 UTC);
        let out = render_servers(&[sample()], true, Output::Table, now).unwrap();
        let want = "\
NAME                                   ACCEPTED   PHASE        CONNECTED   MANUFACTURER   PRODUCT       CPUS   MEMORY   DISKS                  NICS                        AGE
5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e   false      discovered   true        QEMU           Standard PC   2      1Gi      vda:10Gi,nvme0n1:4Gi   ens3:e1000,ens4:no-driver   2m
";
        assert_eq!(out, want, "\n{out}");
        let wide = render_servers(&[sample()], true, Output::Wide, now).unwrap();
        assert!(
            wide.lines().next().unwrap().ends_with(
                "SERIAL   MACS                                  ADDRESS          IDENTITY"
            ),
            "{wide}"
        );
        assert!(
            wide.contains("52:54:00:00:00:01,52:54:00:00:00:02   10.0.0.5:40000   smbios"),
            "{wide}"
        );
    }

    #[test]
    fn describe_shows_the_undriven_nic_with_pci_ids() {
        let now = time::macros::datetime!(2026-01-01 00:02 UTC);
        let out = describe(&sample(), now);
        assert!(
            out.contains("<no driver bound>   0000:00:04.0 [8086:10d3]"),
            "{out}"
        );
        assert!(
            out.starts_with("Name:             5c1a3d4e-8f2b-4a6c-9d0e-1f2a3b4c5d6e\n"),
            "{out}"
        );
        assert!(out.contains("Identity:         SMBIOS UUID"), "{out}");
    }

    #[test]
    fn json_and_yaml_are_resource_shaped() {
        let now = time::macros::datetime!(2026-01-01 00:02 UTC);
        let json: serde_json::Value =
            serde_json::from_str(&render_servers(&[sample()], false, Output::Json, now).unwrap())
                .unwrap();
        assert_eq!(json["apiVersion"], crate::model::API_VERSION);
        assert_eq!(json["kind"], "Server");
        assert_eq!(json["metadata"]["resourceVersion"], 7);
        assert_eq!(
            json["status"]["hardware"]["disks"][0]["sizeBytes"],
            10u64 << 30
        );
        let yaml = render_servers(&[sample()], true, Output::Yaml, now).unwrap();
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
    }
}
