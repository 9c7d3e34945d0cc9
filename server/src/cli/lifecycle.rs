//! CLI verbs of the lifecycle: wipe, cordon, reboot/poweroff, allocate, release, and the
//! ServerClass / MachineConfig / ServerBinding resources.
use siderite::proto::admin::v1::{
    AllocateRequest, ApplyResourceRequest, CordonServerRequest, DeleteResourceRequest,
    ListResourcesRequest, PowerServerRequest, ReleaseRequest, WipeServerRequest,
};

use super::table::Table;
use super::{client, status_err, Output, Target};

pub async fn wipe(addr: &Target, name: &str, mode: Option<String>) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let s = c
        .wipe_server(WipeServerRequest {
            name: name.into(),
            mode: mode.unwrap_or_default(),
        })
        .await
        .map_err(|s| status_err(&format!("wiping server {name}"), s))?
        .into_inner();
    let st = s.status.unwrap_or_default();
    Ok(format!(
        "server/{name} wiping ({} wipe, command {})\n",
        st.wipe_mode, st.pending_command
    ))
}

pub async fn cordon(addr: &Target, name: &str, cordon: bool) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.cordon_server(CordonServerRequest {
        name: name.into(),
        cordon,
    })
    .await
    .map_err(|s| status_err(&format!("cordoning server {name}"), s))?;
    Ok(format!(
        "server/{name} {}\n",
        if cordon { "cordoned" } else { "uncordoned" }
    ))
}

pub async fn power(addr: &Target, name: &str, action: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.power_server(PowerServerRequest {
        name: name.into(),
        action: action.into(),
    })
    .await
    .map_err(|s| status_err(&format!("{action} server {name}"), s))?;
    Ok(format!("server/{name}: {action} sent to the agent\n"))
}

/// `siderite apply -f`: any resource; Environments go to their own call.
pub async fn apply(addr: &Target, manifest: &str) -> anyhow::Result<String> {
    let head: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest)
        .map_err(|e| anyhow::anyhow!("the manifest is not YAML or JSON: {e}"))?;
    let kind = head
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    if kind == "Environment" {
        return super::apply(addr, manifest).await;
    }
    let mut c = client(addr).await?;
    let reply = c
        .apply_resource(ApplyResourceRequest {
            manifest: manifest.into(),
        })
        .await
        .map_err(|s| status_err("applying", s))?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&reply.json)?;
    let name = v["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = format!("{}/{name} applied", reply.kind.to_ascii_lowercase());
    if reply.kind == "ServerClass" {
        out.push_str(&format!(
            ": matches {} servers, {} free",
            v["status"]["matching"], v["status"]["free"]
        ));
    }
    out.push('\n');
    Ok(out)
}

pub async fn get(
    addr: &Target,
    kind: &str,
    output: Output,
    show_secrets: bool,
) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let items: Vec<serde_json::Value> = c
        .list_resources(ListResourcesRequest {
            kind: kind.into(),
            show_secrets,
        })
        .await
        .map_err(|s| status_err(&format!("listing {kind}"), s))?
        .into_inner()
        .json
        .iter()
        .map(|j| serde_json::from_str(j))
        .collect::<Result<_, _>>()?;
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(&list)? + "\n"),
        Output::Yaml => Ok(serde_yaml_ng::to_string(&list)?),
        Output::Table | Output::Wide => Ok(match kind {
            "ServerClass" => {
                let mut t = Table::new(["NAME", "SELECTORS", "MATCHING", "FREE"]);
                for e in &items {
                    let n = e["spec"]["selectors"].as_array().map_or(0, Vec::len);
                    t.row(vec![
                        s(&e["metadata"]["name"]),
                        n.to_string(),
                        s(&e["status"]["matching"]),
                        s(&e["status"]["free"]),
                    ]);
                }
                t.render()
            }
            "MachineConfig" => {
                let mut t = Table::new(["NAME", "PATCHES", "INSTALL DISK"]);
                for e in &items {
                    let n = e["spec"]["patches"].as_array().map_or(0, Vec::len);
                    t.row(vec![
                        s(&e["metadata"]["name"]),
                        n.to_string(),
                        if e["spec"]["installDisk"].is_null() {
                            "<first disk>".into()
                        } else {
                            e["spec"]["installDisk"].to_string()
                        },
                    ]);
                }
                t.render()
            }
            _ => {
                let mut t = Table::new([
                    "NAME",
                    "SERVER",
                    "CLASS",
                    "ENVIRONMENT",
                    "CONFIG",
                    "CREATED",
                ]);
                for e in &items {
                    t.row(vec![
                        s(&e["metadata"]["name"]),
                        s(&e["spec"]["server"]),
                        s(&e["spec"]["serverClass"]),
                        s(&e["spec"]["environment"]),
                        s(&e["spec"]["machineConfig"]),
                        s(&e["metadata"]["creationTimestamp"]),
                    ]);
                }
                t.render()
            }
        }),
    }
}

pub async fn delete(addr: &Target, kind: &str, name: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    c.delete_resource(DeleteResourceRequest {
        kind: kind.into(),
        name: name.into(),
    })
    .await
    .map_err(|s| status_err(&format!("deleting {kind} {name}"), s))?;
    Ok(format!("{}/{name} deleted\n", kind.to_ascii_lowercase()))
}

pub async fn allocate(
    addr: &Target,
    class: &str,
    environment: &str,
    config: &str,
    name: Option<String>,
) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let reply = c
        .allocate(AllocateRequest {
            server_class: class.into(),
            environment: environment.into(),
            machine_config: config.into(),
            name: name.unwrap_or_default(),
        })
        .await
        .map_err(|s| status_err("allocating", s))?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&reply.json)?;
    Ok(format!(
        "serverbinding/{} -> server/{}\n",
        v["metadata"]["name"].as_str().unwrap_or_default(),
        v["spec"]["server"].as_str().unwrap_or_default()
    ))
}

pub async fn release(addr: &Target, name: &str) -> anyhow::Result<String> {
    let mut c = client(addr).await?;
    let s = c
        .release(ReleaseRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("releasing {name}"), s))?
        .into_inner();
    Ok(format!(
        "server/{} released: it is wiped before it is clean again\n",
        crate::model::name(&s)
    ))
}
