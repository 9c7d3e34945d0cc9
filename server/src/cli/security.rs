//! CLI verbs of security: join tokens, operators, revoking a server's credential, whoami.
use siderite::proto::admin::v1::{
    CreateJoinTokenRequest, CreateOperatorRequest, JoinToken, ListJoinTokensRequest,
    ListOperatorsRequest, RevokeJoinTokenRequest, RevokeOperatorRequest, RevokeServerRequest,
    WhoAmIRequest,
};

use super::table::Table;
use super::{client, status_err, Target};

fn token_rows(tokens: &[JoinToken], show: bool) -> String {
    let mut t = Table::new(["ID", "BOOT", "CREATED", "EXPIRES", "REVOKED", "DESCRIPTION"]);
    if show {
        t = Table::new([
            "ID",
            "BOOT",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "DESCRIPTION",
            "TOKEN",
        ]);
    }
    for k in tokens {
        let mut row = vec![
            k.id.clone(),
            k.boot.to_string(),
            k.created.clone(),
            if k.expires.is_empty() {
                "never".into()
            } else {
                k.expires.clone()
            },
            if k.revoked.is_empty() {
                "-".into()
            } else {
                k.revoked.clone()
            },
            k.description.clone(),
        ];
        if show {
            row.push(k.token.clone());
        }
        t.row(row);
    }
    t.render()
}

/// `siderite token create`: prints the token once; it is not shown again.
pub async fn token_create(
    addr: &Target,
    description: &str,
    ttl_seconds: u64,
    no_boot: bool,
) -> anyhow::Result<String> {
    let t = client(addr)
        .await?
        .create_join_token(CreateJoinTokenRequest {
            description: description.into(),
            ttl_seconds,
            no_boot,
        })
        .await
        .map_err(|s| status_err("creating a join token", s))?
        .into_inner();
    Ok(format!(
        "{}\n# join token {} created{}; pass it as siderite.token= (it is not shown again)\n",
        t.token,
        t.id,
        if t.boot {
            ", handed to network-booting machines from now on"
        } else {
            ""
        }
    ))
}

pub async fn token_list(addr: &Target, show_secrets: bool) -> anyhow::Result<String> {
    let tokens = client(addr)
        .await?
        .list_join_tokens(ListJoinTokensRequest { show_secrets })
        .await
        .map_err(|s| status_err("listing join tokens", s))?
        .into_inner()
        .tokens;
    Ok(token_rows(&tokens, show_secrets))
}

pub async fn token_revoke(addr: &Target, id: &str) -> anyhow::Result<String> {
    client(addr)
        .await?
        .revoke_join_token(RevokeJoinTokenRequest { id: id.into() })
        .await
        .map_err(|s| status_err(&format!("revoking join token {id}"), s))?;
    Ok(format!("join token {id} revoked\n"))
}

pub async fn operator_create(addr: &Target, name: &str, role: &str) -> anyhow::Result<String> {
    let o = client(addr)
        .await?
        .create_operator(CreateOperatorRequest {
            name: name.into(),
            role: role.into(),
        })
        .await
        .map_err(|s| status_err(&format!("creating operator {name}"), s))?
        .into_inner();
    Ok(format!(
        "{}\n# operator {} ({}) created; put the token in their config (it is not shown again)\n",
        o.token, o.name, o.role
    ))
}

pub async fn operator_list(addr: &Target) -> anyhow::Result<String> {
    let ops = client(addr)
        .await?
        .list_operators(ListOperatorsRequest {})
        .await
        .map_err(|s| status_err("listing operators", s))?
        .into_inner()
        .operators;
    let mut t = Table::new(["NAME", "ROLE", "CREATED", "REVOKED"]);
    for o in ops {
        t.row(vec![
            o.name,
            o.role,
            o.created,
            if o.revoked.is_empty() {
                "-".into()
            } else {
                o.revoked
            },
        ]);
    }
    Ok(t.render())
}

pub async fn operator_revoke(addr: &Target, name: &str) -> anyhow::Result<String> {
    client(addr)
        .await?
        .revoke_operator(RevokeOperatorRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("revoking operator {name}"), s))?;
    Ok(format!("operator {name} revoked\n"))
}

pub async fn revoke_server(addr: &Target, name: &str) -> anyhow::Result<String> {
    client(addr)
        .await?
        .revoke_server(RevokeServerRequest { name: name.into() })
        .await
        .map_err(|s| status_err(&format!("revoking server {name}'s credential"), s))?;
    Ok(format!(
        "server/{name}: machine credential revoked (session closed, metadata refused)\n"
    ))
}

pub async fn whoami(addr: &Target) -> anyhow::Result<String> {
    let w = client(addr)
        .await?
        .who_am_i(WhoAmIRequest {})
        .await
        .map_err(|s| status_err("whoami", s))?
        .into_inner();
    Ok(format!("{} ({}) at {}\n", w.name, w.role, addr.server))
}
